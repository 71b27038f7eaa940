"""Physical operators over pyarrow.RecordBatch, sources and sinks."""
