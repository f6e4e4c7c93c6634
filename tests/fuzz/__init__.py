"""The hostile-input fuzz suite: seeded, table- and hypothesis-driven cases where each case
must end in a clean error (a SparsifyError whose message is one paragraph; through the CLI,
exit 2 or 3 and no traceback) or in a correct result, never a crash, a hang or a silently
wrong output.

Families, one module each:
  (a) ``test_sparse_files``: sparse ONNX files mutated (CSR arrays, attributes, graph
      structure) and byte-flipped or truncated, through ``Session``, ``inspect`` and ``run``;
  (b) ``test_run_dirs``: run directories (manifest fields, safetensors headers, masks) --
      the hook where that family joins;
  (c) ``test_onnx_files``: ONNX files given to ``inspect``/``bench``/``run``;
  (d) ``test_feeds``: feeds to ``Session.run``;
  (e) ``test_writes``: interrupted and concurrent exports.

The oracle is in ``oracle.py`` (``clean``, ``check_cli``, ``check_session``); a new family
uses it and adds its cases. ``--fuzz-long`` multiplies the seeded cases (``fuzz_count``).
"""
