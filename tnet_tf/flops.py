"""Parameters and FLOPs of a model at inference.

FLOPs follow Appendix B.4, eq. 11 of the paper: only multiplications are
counted, and only in convolutions and dense layers,

    conv:            C_in * k_h * k_w * H_out * W_out * C_out
    depthwise conv:  k_h * k_w * H_out * W_out * C_in * multiplier
    dense / matmul:  M * K * N  (k = H_out = W_out = 1)

while batch norm, activations, additions, pooling, resizing and
`crop_and_resize` count 0. The counter traces the model with `tf.function`
on a batch of ONE image (so every shape is static) and walks the operations
of the traced graph, descending into nested functions (`tf.function` calls,
`tf.map_fn` / `tf.while_loop` bodies times their static trip count, and the
larger branch of `tf.cond` / `tf.switch_case`). `count_flops_profiler`
reports, for comparison, what TensorFlow's own profiler counts on the same
graph.

Everything here takes `fn`: a Keras model or any callable that maps an image
batch [B, H, W, C] to a tensor or a nested structure of tensors. It is called
as `fn(images, training=False, **call_kwargs)` when it accepts `training`
(every Keras layer does) and `fn(images, **call_kwargs)` otherwise, e.g.
`count_flops_eq11(tnet, (448, 448, 3), locations=[2])`.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

_CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
_WHILE_OPS = ("While", "StatelessWhile")
_IF_OPS = ("If", "StatelessIf")
_CASE_OPS = ("Case", "StatelessCase")


# ----------------------------------------------------------------------------
# Tracing


def _accepts_training(fn: Callable) -> bool:
    if isinstance(fn, tf.keras.layers.Layer):
        return True
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "training" or p.kind == p.VAR_KEYWORD for p in parameters)


def inference_call(fn: Callable, **call_kwargs) -> Callable[[tf.Tensor], Any]:
    """Returns `images -> fn(images, [training=False,] **call_kwargs)`."""
    if _accepts_training(fn):
        return lambda images: fn(images, training=False, **call_kwargs)
    return lambda images: fn(images, **call_kwargs)


def check_input_shape(input_shape: Sequence[int]) -> Tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (height, width, channels) of positive sizes, "
                         f"got {tuple(input_shape)}")
    return shape


def trace(fn: Callable, input_shape: Sequence[int], batch_size: int = 1, **call_kwargs):
    """Traces the inference call on a [batch_size, H, W, C] float32 batch.

    Returns the concrete function; tracing also builds a Keras model that has
    not been called yet (its variables are created outside the graph).
    """
    shape = check_input_shape(input_shape)
    spec = tf.TensorSpec([batch_size, *shape], tf.float32, name="images")
    return tf.function(inference_call(fn, **call_kwargs)).get_concrete_function(spec)


# ----------------------------------------------------------------------------
# Walking the graph and its nested functions


def _function_graph(name: str, graphs: Sequence[tf.Graph]) -> tf.Graph:
    for graph in reversed(graphs):
        function = graph._get_function(name)  # pylint: disable=protected-access
        if function is not None:
            return function.graph
    raise ValueError(f"cannot find the graph of function {name!r} in the traced model")


def _while_trip_count(op: tf.Operation) -> int:
    # Control flow v2: While(loop_counter, maximum_iterations, *loop_vars).
    # tf.map_fn / tf.vectorized_map fallbacks set maximum_iterations to the
    # static number of elements, which is also the trip count.
    limit = op.inputs[1]
    value = tf.get_static_value(limit)
    if value is None or int(value) < 0:
        raise ValueError(f"while loop {op.name!r} has no static maximum_iterations, so its "
                         f"trip count and cost cannot be counted from the graph; use "
                         f"tf.map_fn or pass maximum_iterations")
    return int(value)


def _walk(graph: tf.Graph, count_graph: Callable[[tf.Graph], int],
          parents: Sequence[tf.Graph] = ()) -> int:
    """count_graph(graph) plus the cost of every function called from it."""
    graphs = [*parents, graph]
    total = count_graph(graph)
    for op in graph.get_operations():
        if op.type in _CALL_OPS:
            total += _walk(_function_graph(op.get_attr("f").name, graphs), count_graph, graphs)
        elif op.type in _WHILE_OPS:
            body = _function_graph(op.get_attr("body").name, graphs)
            cond = _function_graph(op.get_attr("cond").name, graphs)
            trips = _while_trip_count(op)
            total += trips * _walk(body, count_graph, graphs)
            total += (trips + 1) * _walk(cond, count_graph, graphs)
        elif op.type in _IF_OPS or op.type in _CASE_OPS:
            if op.type in _IF_OPS:
                names = [op.get_attr("then_branch").name, op.get_attr("else_branch").name]
            else:
                names = [branch.name for branch in op.get_attr("branches")]
            total += max(_walk(_function_graph(n, graphs), count_graph, graphs) for n in names)
    return total


# ----------------------------------------------------------------------------
# Eq. 11


def _static_shape(tensor: tf.Tensor, op: tf.Operation) -> List[int]:
    if not tensor.shape.is_fully_defined():
        raise ValueError(f"op {op.name!r} ({op.type}) has a dynamic shape {tensor.shape}; eq. 11 "
                         f"needs static shapes (the model is traced with batch 1)")
    return tensor.shape.as_list()


def _einsum_multiplications(op: tf.Operation) -> int:
    equation = op.get_attr("equation").decode().replace(" ", "")
    if "->" not in equation:
        raise ValueError(f"einsum {op.name!r}: implicit-output equation {equation!r} is not "
                         f"supported; write it with '->'")
    inputs, output = equation.split("->")
    operands = inputs.split(",")
    if len(operands) < 2:
        return 0
    sizes = {}
    for labels, tensor in zip(operands, op.inputs):
        shape = _static_shape(tensor, op)
        if "..." in labels:
            head, tail = labels.split("...")
            shape = shape[:len(head)] + shape[len(shape) - len(tail):]
            labels = head + tail
        sizes.update(zip(labels, shape))
    contracted = {label for label in sizes if label not in output.replace("...", "")}
    output_elements = math.prod(_static_shape(op.outputs[0], op))
    return (len(operands) - 1) * output_elements * math.prod(sizes[l] for l in contracted)


def op_multiplications(op: tf.Operation) -> int:
    """Multiplications of one op by eq. 11 (0 for anything but conv / dense)."""
    kind = op.type
    if kind in ("Conv2D", "Conv3D", "_FusedConv2D"):
        # Output elements (N * H_out * W_out * C_out) times k_h * k_w * C_in per output.
        filter_shape = _static_shape(op.inputs[1], op)
        return math.prod(_static_shape(op.outputs[0], op)) * math.prod(filter_shape[:-1])
    if kind == "DepthwiseConv2dNative":
        # Output has C_in * multiplier channels, each from a k_h x k_w window.
        k_h, k_w = _static_shape(op.inputs[1], op)[:2]
        return math.prod(_static_shape(op.outputs[0], op)) * k_h * k_w
    if kind == "Conv2DBackpropInput":  # transposed convolution
        k_h, k_w, c_out, _ = _static_shape(op.inputs[1], op)
        return math.prod(_static_shape(op.inputs[2], op)) * k_h * k_w * c_out
    if kind in ("MatMul", "_FusedMatMul"):
        a_shape = _static_shape(op.inputs[0], op)
        k = a_shape[0] if op.get_attr("transpose_a") else a_shape[1]
        return math.prod(_static_shape(op.outputs[0], op)) * k
    if kind in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a_shape = _static_shape(op.inputs[0], op)
        k = a_shape[-2] if op.get_attr("adj_x") else a_shape[-1]
        return math.prod(_static_shape(op.outputs[0], op)) * k
    if kind == "Einsum":
        return _einsum_multiplications(op)
    return 0


def _graph_multiplications(graph: tf.Graph) -> int:
    return sum(op_multiplications(op) for op in graph.get_operations())


def count_flops_eq11(fn: Callable, input_shape: Sequence[int], **call_kwargs) -> int:
    """Multiplications per image by eq. 11 of Appendix B.4 (see the module docstring).

    Args:
      fn: a Keras model or callable taking an image batch.
      input_shape: (height, width, channels) of one image.
      **call_kwargs: passed to every call, e.g. `locations=[2, 1]`.

    Returns:
      Multiplications for one image (the graph is traced with batch 1).
    """
    return graph_flops_eq11(trace(fn, input_shape, **call_kwargs).graph)


def graph_flops_eq11(graph: tf.Graph) -> int:
    """Eq. 11 multiplications of a traced graph (e.g. `trace(...).graph`) and its functions."""
    return _walk(graph, _graph_multiplications)


def count_flops_profiler(fn: Callable, input_shape: Sequence[int], **call_kwargs) -> int:
    """FLOPs per image as counted by TensorFlow's profiler on the same traced graph.

    Uses `model_analyzer.profile` with `ProfileOptionBuilder.float_operation()`
    on the batch-1 graph and on every nested function graph (weighted like in
    `count_flops_eq11`). TensorFlow counts a multiply-add as 2 FLOPs and also
    counts element-wise ops (bias adds, batch norm, activations, additions,
    means), so the result is a little more than twice eq. 11 for conv nets.
    """
    return graph_flops_profiler(trace(fn, input_shape, **call_kwargs).graph)


def graph_flops_profiler(graph: tf.Graph) -> int:
    """TensorFlow profiler FLOPs of a traced graph and its functions (see above)."""
    # Imported here: internal modules, only needed for this comparison.
    from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-import-not-at-top
    from tensorflow.python.profiler import option_builder  # pylint: disable=g-import-not-at-top

    builder = option_builder.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()

    def profile(function_graph: tf.Graph) -> int:
        if all(op.type in ("Placeholder", "NoOp") for op in function_graph.get_operations()):
            return 0
        return int(model_analyzer.profile(graph=function_graph, options=options).total_float_ops)

    # The profiler logs a deprecation warning through tf_logging; silence it.
    verbosity = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")
    try:
        return _walk(graph, profile)
    finally:
        tf.get_logger().setLevel(verbosity)


# ----------------------------------------------------------------------------
# Parameters


def count_params(model: tf.keras.Model, input_shape: Optional[Sequence[int]] = None,
                 **call_kwargs) -> int:
    """Trainable + non-trainable parameters, as `model.summary()` reports them.

    A model that has not been called yet is built by tracing it on
    `input_shape` (required in that case) with `call_kwargs`.
    """
    if not model.built or not model.weights:
        if input_shape is None:
            raise ValueError(f"model {model.name!r} is not built; call it once or pass "
                             f"input_shape to count_params")
        trace(model, input_shape, **call_kwargs)
    return int(sum(np.prod(w.shape.as_list(), dtype=np.int64) for w in model.weights))
