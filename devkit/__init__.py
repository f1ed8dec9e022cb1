"""The development kit: local clusters, their binaries, the demo and the test helpers.

Plugged into the `fluidfed` CLI by entry point like the components; never imported by the
runtime packages and not shipped in the image."""
