"""What a model input is: name, shape, dtype and the values it takes (:class:`InputSpec`), shared
by data loading, export, the runtime checks and the benchmark; numpy only, so that importing it
costs nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

Dim = int | str | None


#: The ONNX metadata key under which an exported file records its input specs (as JSON), so that
#: ``sparsify bench`` feeds it valid token ids and masks.
INPUTS_METADATA = "sparsify.inputs"
#: ``InputSpec.values`` kinds: how valid values of an input are drawn.
VALUE_KINDS = ("normal", "index", "mask")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (batch first), dtype name, and what values it takes.

    ``shape`` holds an int per dim; a model file may name a dynamic dim instead (a str, or None
    when unnamed). ``dtype`` is a numpy dtype name ("float32", "int64", "bool"); a numpy dtype
    given is stored by its name. ``dynamic`` lists the axes whose size may change (the batch,
    and e.g. a sequence axis).
    ``values``: ``"normal"`` (unit normal floats), ``"index"`` (integers in ``[low, high)``,
    e.g. token ids below an embedding's row count) or ``"mask"`` (a 0/1 padding mask: ones,
    then zeros, at least one 1 per row). ``source`` says what the range was read from.
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    dynamic: tuple[int, ...] = (0,)
    values: str = "normal"
    low: int = 0
    high: int | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form; ``dynamic`` and the value range only when not the defaults."""
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.dynamic != (0,):
            out["dynamic"] = list(self.dynamic)
        if self.values != "normal":
            out.update(values=self.values, low=self.low, high=self.high, source=self.source)
        return out

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "InputSpec":
        """The spec :meth:`to_dict` wrote (a manifest's entries are validated before, by sparsify.manifest)."""
        high = d.get("high")
        return InputSpec(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]),
                         tuple(int(a) for a in d.get("dynamic", (0,))), str(d.get("values", "normal")),
                         int(d.get("low", 0)), None if high is None else int(high), d.get("source"))

    @property
    def is_integer(self) -> bool:
        """Whether the input holds int32 or int64 values."""
        return self.dtype in ("int64", "int32")

    def valid_range(self) -> tuple[int, int] | None:
        """``[low, high)`` of an integer input whose values are known (an index or a 0/1 mask)."""
        if self.values == "mask":
            return (0, 2)
        if self.values == "index" and self.high is not None:
            return (self.low, self.high)
        return None

    def describe_range(self) -> str:
        """The valid values for people: "0..99 (embedding rows)" or "any value"."""
        rng = self.valid_range()
        if rng is None:
            return "any value"
        what = f"{rng[0]}..{rng[1] - 1}"
        return what + (f" ({self.source})" if self.source else "")
