"""The library's post flow: preprocess -> forward -> postprocess, and the Annotator."""
