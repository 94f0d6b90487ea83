"""Reports over the result.json files boots wrote: `harness diff` (what changed for dom0 between two boots) and
the Xen x Linux version matrix. They read records, never a machine; nothing here imports the lab."""
