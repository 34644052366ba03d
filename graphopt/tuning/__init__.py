"""Kernel tuning: MetaSchedule search (tune.py), persistent databases (database.py), record
selection in the model (select_in_model.py) and remote measurement over TVM RPC (rpc.py)."""
