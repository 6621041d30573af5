"""Using a trained generator: images and morphing animations from a snapshot (`ganflow generate`, `morph`), and
the local web page and its JSON/PNG API (`ganflow serve`)."""
