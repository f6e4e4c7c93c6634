"""Channel analysis of a captured graph: `analyze(gm)` walks it once, applying each op's rule
(`sparsify.graph.rules.RULES`), and returns a `DepGraph`. An op without a rule that receives
pruned-channel labels blocks those channels, naming the op and where it came from."""

from __future__ import annotations

from torch import fx

from sparsify.errors import SparsifyError, StepError, one_paragraph
# Every rule module is imported here, explicitly, so that RULES is complete before the walk.
from sparsify.graph import rules_layers, rules_shape  # noqa: F401  (rules_layers: registers its rules)
from sparsify.graph.depgraph import DepGraph, where
from sparsify.graph.labels import LabelError
from sparsify.graph.rules import PARAM_VIEW_OPS, RULES, flat_nodes, lab, op_name, param_source


def analyze(gm: fx.GraphModule) -> DepGraph:
    """Build the dependency graph of a captured (unlifted) GraphModule."""
    g = DepGraph(gm)
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "get_attr", "call_module"):
            continue
        if n.op == "output":
            for a in flat_nodes(n.args):
                g.block_lab(g.labs.get(a.name), f"channels reach the model output '{a.name}'")
            continue
        if n.op != "call_function":
            continue
        name = op_name(n)
        if not n.users and name != "getitem":
            continue  # dead code: removed by slim before rewriting
        fn = RULES.get(name)
        if fn is None and rules_shape.pointwise_applies(n):
            fn = rules_shape.pointwise
        ins = [lab(g, a) for a in flat_nodes(n.args) + flat_nodes(n.kwargs)]
        labelled = [x for x in ins if x is not None]
        if name in PARAM_VIEW_OPS and not labelled and param_source(g, n.args[0]) is not None:
            g.param_views[n.name] = param_source(g, n.args[0])
        if fn is None:
            if labelled:
                for x in labelled:
                    g.block(x.arr, f"op {name} ('{n.name}') at {where(n)} has no channel rule")
            g.labs[n.name] = None
            continue
        try:
            g.labs[n.name] = fn(g, n)
        except SparsifyError:
            raise
        except (LabelError, ValueError, IndexError, TypeError) as e:
            # LabelError: the rule cannot carry these channels; the others: an argument pattern the
            # rule does not know (e.g. broadcast heads). Either way: do not prune through it.
            why = str(e) if isinstance(e, LabelError) else f"unsupported arguments ({type(e).__name__}: {e})"
            for x in labelled:
                g.block(x.arr, f"{name} ('{n.name}') at {where(n)}: {why}")
            g.labs[n.name] = None if not isinstance(n.meta.get("val"), (list, tuple)) else \
                [None] * len(n.meta["val"])
        except Exception as e:  # a bug in a rule: name the op and where it is, never a traceback
            raise StepError(f"planning: the channel rule of op {name} ('{n.name}') at {where(n)} failed: "
                            f"{one_paragraph(f'{type(e).__name__}: {e}', 400)}; skip the layers around it with "
                            "--ignore REGEX, re-run with 'sparsify --debug' for the traceback, and report it") from e
    return g
