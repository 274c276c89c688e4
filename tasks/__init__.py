"""The seven stages of the pipeline, one module each: `run(ctx)` loads the stage's inputs, calls the
library and writes its outputs into `ctx.out`; the runner (runner/) does everything around it."""
