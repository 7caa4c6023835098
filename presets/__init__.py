"""Architecture presets shipped as YAML (installed as the package data `prunecli.presets`)."""
