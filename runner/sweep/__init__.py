"""What a sweep is, checked before Ray starts: the space as run, its name, the storage that holds
it, the MLflow store it logs to, and the lease that lets one driver at a time run it. No Ray and
no MLflow are imported here.
"""

from .places import default_storage, tracking_uri_for
from .spec import Sweep, new_sweep, resume_sweep, space_as_run
from .storage import Storage, StorageFault, StorageFull, StorageUnwritable

__all__ = ["Storage", "StorageFault", "StorageFull", "StorageUnwritable", "Sweep", "default_storage", "new_sweep",
           "resume_sweep", "space_as_run", "tracking_uri_for"]
