"""A nightly that says what is new: session.json (one summary per session), the judge that classes each
failure against earlier sessions, trends, and the outputs: text, JSON, one HTML file, KCIDB."""
