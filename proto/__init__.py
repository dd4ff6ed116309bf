"""The gRPC API: `.proto` sources and the Python stubs generated from them (`make proto`).

edgerec's messages are registered in `POOL`, a descriptor pool of edgerec's
own, not in protobuf's default pool. The KServe v2 service is package
`inference`, which tritonclient (and other KServe clients' stubs) register in
the default pool too; two files defining one name there fail at import
("duplicate symbol 'inference.ServerLiveRequest'"). With a pool of its own,
edgerec's server and stubs share a process with any of them. `make proto`
writes the stubs that way (`generate.py`).

Server reflection reads one pool: `describing` builds one that holds every
file a server serves, from whichever pool each comes from.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor

POOL = descriptor_pool.DescriptorPool()


def describing(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A new pool holding `files` and every file they import (imports first), e.g. for server reflection."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        pool.AddSerializedFile(file.serialized_pb)
        added.add(file.name)

    for file in files:
        add(file)
    return pool
