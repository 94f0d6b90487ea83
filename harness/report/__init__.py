"""Reports over what boots and sessions wrote; they read records, never a machine (nothing here imports the lab).

- `harness diff` (diff.py): what changed for dom0 between two boots' result.json;
- the Xen x Linux version matrix (matrix.py) over a session's result.json files;
- a nightly that says what is new: session.json (session.py, one summary per session), the judge that classes
  each failure against earlier sessions and the trends (judge.py), and the outputs: text and JSON
  (outputs.py), one HTML file (html.py), KCIDB (kcidb.py).
"""
