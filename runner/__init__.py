"""The one stage runner and what observes it.

`runner.core.run_stage` runs (or reuses) one stage of dvc.yaml with its section of the run's params snapshot, in a
workspace: the project's data/ (`ProjectWorkspace`) or the store's entries (`StoreWorkspace`, sweeps).
Every path that runs a stage goes through it: `tlpipe run` and the scheduled flows, `dvc repro`
(`python -m tasks.<stage>` ends in `main`), sweep points and GPU agents. MLflow (`recorder.Recorder`),
DVC (`dvc.Commits`), lineage (`lineage.Collector`) and the console (`progress.ConsoleProgress`)
observe its events.
"""
