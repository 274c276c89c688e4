"""Stage functions of the pipeline: load inputs, call the library, write outputs atomically, log."""
