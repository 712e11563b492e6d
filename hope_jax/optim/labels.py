"""Level labels for parameters: ordered regex rules over path strings (DESIGN D7, big_vision's idiom).

Every function here works from key paths, so the same rules label a pure pytree of arrays and an `nnx.State`
of `nnx.Param` variables alike (the latter flattens with a trailing `.value` attribute key, which is dropped).
"""

import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def _key_name(key) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_string(path: Sequence) -> str:
    """'blocks/0/cms/levels/1/w_in' from a key path; an `nnx.Variable`'s trailing `.value` attribute is not
    part of it."""
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_name(key) for key in keys)


def param_paths(params) -> list[str]:
    return [path_string(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def compile_rules(rules: Sequence[Sequence[str]]) -> list[tuple[re.Pattern, str]]:
    compiled = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"optim.rules entries must be (regex, level) pairs, got {rule!r}")
        pattern, level = rule
        try:
            compiled.append((re.compile(pattern), str(level)))
        except re.error as err:
            raise ValueError(f"optim.rules: invalid regex {pattern!r} for level {level!r}: {err}") from err
    return compiled


def label_for_path(path: str, compiled_rules: Sequence[tuple[re.Pattern, str]]) -> str | None:
    """The level of the first rule whose regex matches the whole path, or None."""
    for pattern, level in compiled_rules:
        if pattern.fullmatch(path):
            return level
    return None


def make_labeller(rules: Sequence[Sequence[str]]) -> Callable:
    """A function pytree -> pytree of level names (same structure), raising on any unlabelled leaf.

    The error names every unlabelled path at once, so a new model's missing rules are fixed in one go."""
    compiled = compile_rules(rules)

    def labeller(tree):
        unlabelled = []

        def label_leaf(path, _):
            path_str = path_string(path)
            level = label_for_path(path_str, compiled)
            if level is None:
                unlabelled.append(path_str)
            return level

        labels = jax.tree_util.tree_map_with_path(label_leaf, tree)
        if unlabelled:
            rules_text = ", ".join(f"({p.pattern!r} -> {lvl!r})" for p, lvl in compiled)
            raise ValueError(
                f"{len(unlabelled)} parameter(s) match no optim.rules entry: {', '.join(unlabelled)}. "
                f"Rules in order: [{rules_text}]. Add a (regex, level) rule covering them."
            )
        return labels

    return labeller


def make_path_predicate_mask(predicate: Callable[[str, jax.Array], bool]) -> Callable:
    """A mask function pytree -> pytree of bools from a predicate on (path string, leaf)."""

    def mask(tree):
        return jax.tree_util.tree_map_with_path(lambda path, leaf: predicate(path_string(path), leaf), tree)

    return mask


def make_weight_decay_mask(exclude_patterns: Sequence[str], min_ndim: int) -> Callable:
    """Decay a parameter iff it has at least `min_ndim` dimensions and its path matches none of the
    patterns."""
    compiled = [re.compile(p) for p in exclude_patterns]

    def decays(path: str, leaf) -> bool:
        if jnp.ndim(leaf) < min_ndim:
            return False
        return not any(p.fullmatch(path) for p in compiled)

    return make_path_predicate_mask(decays)


def level_update_norms(updates, labels) -> dict[str, jax.Array]:
    """Global L2 norm of the updates of each level: {level: norm}.

    `labels` is the labels pytree from `build_optimizer`; it is matched to `updates` by path string, so the
    two may differ in wrapping (an `nnx.State` of variables vs. the pure arrays given to the optimiser)."""
    label_by_path = {path_string(path): label for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
    squares: dict[str, list[jax.Array]] = {}
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        path_str = path_string(path)
        if path_str not in label_by_path:
            raise KeyError(f"update at {path_str!r} has no level label; labels cover {sorted(label_by_path)}")
        squares.setdefault(label_by_path[path_str], []).append(jnp.sum(jnp.square(update.astype(jnp.float32))))
    return {level: jnp.sqrt(sum(terms)) for level, terms in squares.items()}
