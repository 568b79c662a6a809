"""Peephole fusions (onnxscript rewrite rules) and the passes that apply them."""
