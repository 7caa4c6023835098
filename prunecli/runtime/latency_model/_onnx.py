"""One-node ONNX models (a conv, a linear, a relu) at a layer's real shapes, built without torch, to be timed."""

from __future__ import annotations


def _conv_bytes(n: int, cin: int, cout: int, hw: tuple, kernel, stride, padding, dilation, groups: int,
                bias: bool, opset: int = 18) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cin, *hw])
    inits = [numpy_helper.from_array(rng.standard_normal((cout, cin // groups, *kernel)).astype(np.float32) * 0.05, "w")]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], kernel_shape=list(kernel),
                            strides=list(stride), pads=list(padding) * 2, dilations=list(dilation), group=groups)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([node], "layer", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def _linear_bytes(shape: tuple, cin: int, cout: int, bias: bool, opset: int = 18) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [*shape[:-1], cin])
    inits = [numpy_helper.from_array(rng.standard_normal((cin, cout)).astype(np.float32) * 0.05, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if bias else "y"])]
    if bias:
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "layer", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def _relu_bytes(shape: tuple) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "overhead", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 9)
    return model.SerializeToString()


def layer_bytes(layer, cin: int, cout: int) -> bytes:
    if layer.op == "linear":
        return _linear_bytes(layer.shape, cin, cout, layer.bias)
    groups = cin if layer.depthwise else layer.groups
    return _conv_bytes(layer.shape[0], cin, cout, tuple(layer.shape[2:]), layer.kernel, layer.stride, layer.padding,
                       layer.dilation, groups, layer.bias)
