"""Which axes of a parameter are the input and the output features of the matrix it is (DESIGN D7).

Muon and M3 orthogonalise a weight as the linear map it applies, so a per-head q projection [d_model, heads, head_dim]
is one d_model x (heads*head_dim) matrix, not `heads` separate ones, while the initial states of per-head fast-weight
memories [heads, d_in, d_out] are `heads` distinct matrices. The optimiser only sees arrays, so this reading comes
from the logical axis names each module declares on its parameters (`nnx.Param(..., out_sharding=names)`), once,
when the optimiser is built:

1. An axis named 'vocab' (embedding table, LM head) or 'conv_window' (depthwise conv taps): AdamW fallback. The LM
   head goes with the embedding as in the Muon literature: its columns are per-token vectors whose gradients scale
   with token frequency, which orthogonalisation would equalise, and a tied head *is* the embedding.
2. Unnamed axes (None) and 'layers' index distinct matrices: the q/k/v (or gate) streams of a fused projection, the
   slots of persistent tokens, scanned layers. A fused [d, 3, heads, head_dim] projection is therefore three
   d x (heads*head_dim) matrices, exactly what the unfused wq, wk, wv of the same width get; one stream's gradient
   (a large one, or the zero gradient of an unused gate) then never rescales another stream's update.
3. A leading 'heads' axis on a parameter without 'embed' indexes per-head maps inside head space (fast-weight
   initial states, per-head gate vectors): one matrix (or vector) per head.
4. What remains must be at least two feature axes, else the leaf is a vector per stack element (norm scales, biases,
   per-head gate vectors, persistent tokens): AdamW fallback.
5. Kernels keep flax's order, input axes first: a leading 'embed' reads the residual stream (input = that axis,
   output = the rest); a trailing 'embed' writes it (input = the rest, output = that axis); two axes are
   [input, output]. Anything else is ambiguous and raises, naming the parameter.

A leaf without axis names (plain arrays handed to `build_optimizer`) is a matrix when it is 2-D ([input, output]);
an unnamed leaf of more dimensions cannot be read and is refused when an orthogonalising level owns it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from hope_jax.optim.labels import path_string

FALLBACK_AXES = ("vocab", "conv_window")
STACK_AXES = (None, "layers")
MODEL_AXIS = "embed"
HEAD_AXIS = "heads"


@dataclasses.dataclass(frozen=True)
class MatrixLayout:
    """A leaf read as a stack of matrices: `stack` axes index distinct matrices, each with the (flattened) input
    features `inputs` as rows and the output features `outputs` as columns. Axes are positions in the leaf."""

    stack: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def matrix_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        """(input features, output features) of each matrix of a leaf of `shape`."""
        return math.prod(shape[i] for i in self.inputs), math.prod(shape[i] for i in self.outputs)

    def to_matrices(self, leaf: jax.Array) -> jax.Array:
        """[stack, inputs, outputs] view of `leaf` (stack = 1 for a single matrix)."""
        rows, cols = self.matrix_shape(leaf.shape)
        return jnp.transpose(leaf, self.stack + self.inputs + self.outputs).reshape(-1, rows, cols)

    def from_matrices(self, matrices: jax.Array, shape: Sequence[int]) -> jax.Array:
        """Inverse of `to_matrices` for a leaf of `shape`."""
        order = self.stack + self.inputs + self.outputs
        unflattened = matrices.reshape(tuple(shape[i] for i in order))
        return jnp.transpose(unflattened, tuple(order.index(axis) for axis in range(len(shape))))


def layout_from_axis_names(names: Sequence[str | None]) -> MatrixLayout | None:
    """The matrix layout of a parameter with these logical axis names (rules in the module docstring), or None for
    an AdamW fallback. Raises ValueError when the names do not say which axes are input and which output."""
    names = tuple(names)
    if any(name in FALLBACK_AXES for name in names):
        return None
    stack = [axis for axis, name in enumerate(names) if name in STACK_AXES]
    features = [axis for axis, name in enumerate(names) if name not in STACK_AXES]
    if features and names[features[0]] == HEAD_AXIS and MODEL_AXIS not in names:
        stack.append(features.pop(0))
    if len(features) < 2:
        return None
    feature_names = [names[axis] for axis in features]
    if feature_names[0] == MODEL_AXIS:
        inputs, outputs = features[:1], features[1:]
    elif feature_names[-1] == MODEL_AXIS:
        inputs, outputs = features[:-1], features[-1:]
    elif len(features) == 2:
        inputs, outputs = features[:1], features[1:]
    else:
        raise ValueError(
            f"logical axes {names}: cannot tell the input from the output features (no leading or trailing "
            f"{MODEL_AXIS!r}, more than two feature axes); see hope_jax/optim/matrix_layout.py"
        )
    return MatrixLayout(stack=tuple(sorted(stack)), inputs=tuple(inputs), outputs=tuple(outputs))


def unnamed_layout(ndim: int) -> MatrixLayout | None:
    """A leaf without axis names: a 2-D leaf is [input, output], 1-D and scalars fall back."""
    if ndim > 2:
        raise ValueError("a parameter of more than two dimensions needs logical axis names to be orthogonalised")
    return MatrixLayout(stack=(), inputs=(0,), outputs=(1,)) if ndim == 2 else None


def axis_names_by_path(axis_names) -> dict[str, tuple | None]:
    """{path string: axis names} from a pytree of logical PartitionSpecs mirroring the parameters."""
    is_spec = lambda node: isinstance(node, jax.sharding.PartitionSpec) or node is None
    flat = jax.tree_util.tree_flatten_with_path(axis_names, is_leaf=is_spec)[0]
    return {path_string(path): None if spec is None else tuple(spec) for path, spec in flat}


def matrix_layouts(params, axis_names=None, *, paths: Sequence[str] | None = None) -> dict[str, MatrixLayout | None]:
    """{path string: layout (None: AdamW fallback)} for the leaves of `params` whose path is in `paths` (all if None).

    `axis_names` mirrors `params` with each leaf's logical axis names (the model spec's logical PartitionSpecs); an
    empty spec or a missing tree reads as unnamed. Raises one ValueError naming every leaf it cannot read."""
    names_of = axis_names_by_path(axis_names) if axis_names is not None else {}
    layouts, problems = {}, []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path_str = path_string(path)
        if paths is not None and path_str not in paths:
            continue
        names, ndim = names_of.get(path_str), len(jnp.shape(leaf))
        try:
            if not names:
                layouts[path_str] = unnamed_layout(ndim)
            elif len(names) != ndim:
                raise ValueError(f"{len(names)} logical axis names {names} for shape {jnp.shape(leaf)}")
            else:
                layouts[path_str] = layout_from_axis_names(names)
        except ValueError as error:
            problems.append(f"{path_str}: {error}")
    if problems:
        raise ValueError(f"Muon/M3 cannot read {len(problems)} parameter(s) as matrices: " + "; ".join(problems))
    return layouts


def orthogonalise(leaf: jax.Array, layout: MatrixLayout, orthogonalise_matrix: Callable) -> jax.Array:
    """`orthogonalise_matrix` applied to each [inputs, outputs] matrix of `leaf`, returned in the leaf's shape."""
    matrices = jax.vmap(orthogonalise_matrix)(layout.to_matrices(leaf))
    return layout.from_matrices(matrices, leaf.shape)


def map_with_layouts(fn: Callable, layouts: Mapping[str, MatrixLayout], tree, *rest):
    """tree_map of fn(layout, leaf, *rest_leaves), the layout looked up by the leaf's path string."""
    return jax.tree_util.tree_map_with_path(lambda path, *leaves: fn(layouts[path_string(path)], *leaves), tree, *rest)
