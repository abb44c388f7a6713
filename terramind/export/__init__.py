"""ONNX export of TerraMind models (`terramind export`) and their torch-free inference in onnxruntime."""
