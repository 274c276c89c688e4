"""What this pipeline's stages take and hand each other: the params schema, the named sources, the report and the sweep's table."""
