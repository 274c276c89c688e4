"""Source models: a supervised classifier, or a backbone pretrained with SimCLR or BYOL."""
