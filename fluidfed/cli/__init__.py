"""The `fluidfed` command line."""
