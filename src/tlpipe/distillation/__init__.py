"""Self-supervised distillation into a student (SEED, CompRess, MSE) and of the data set (KRR-ST).

The files of a saved synthetic set (`krr_st.save_synthetic`) are named here, where reading whether a
folder holds one imports no torch.
"""

SYNTHETIC_FILE, SYNTHETIC_META = "synthetic.safetensors", "synthetic.json"
