"""Images: captioned data sets, and the checkers that judge generated pictures."""
