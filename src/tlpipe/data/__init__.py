"""Prepared image data sets, their splits, shards, glyphs, augmentation and outside sources."""
