"""Patches the test bench's moto loads (see `scripts/testbed install`).

moto 5.2's `CopySnapshot` looks the source snapshot up in the caller's own
account only, so a copy from a snapshot another account shared (the vault
copy: `ektool snap replicate --to-account`) fails there although EC2 does
it. With this patch, a source the caller does not own is found in the
account that owns it and copied only when that account shared it with the
caller (`createVolumePermission`: the caller's user id, or group `all`);
otherwise `InvalidSnapshot.NotFound`, like EC2. The copy belongs to the
caller, is encrypted when the source is, and takes the given `KmsKeyId`.

Loaded by `ektool_moto_patches.pth` in the venv's site-packages: the `.pth`
only installs an import hook, and the patch is applied when moto's EBS
model is imported (nothing else in the venv pays for it).
"""

import importlib.abc
import sys

TARGET = "moto.ec2.models.elastic_block_store"


def _shared_source(backend, snapshot_id, region):
    """The snapshot `snapshot_id` of another account in `region`, if the
    caller (`backend`'s account) may copy it; raises NotFound otherwise."""
    from moto.ec2.exceptions import InvalidSnapshotIdError
    from moto.ec2.models import ec2_backends

    # dict's own accessors: BackendDict creates missing accounts and regions.
    for account_id, regions in dict.items(ec2_backends):
        if account_id == backend.account_id:
            continue
        other = dict.get(regions, region)
        if other is None:
            continue
        source = other.snapshots.get(snapshot_id)
        if source is None:
            continue
        if (
            backend.account_id in source.create_volume_permission_userids
            or "all" in source.create_volume_permission_groups
        ):
            return source
        raise InvalidSnapshotIdError()
    raise InvalidSnapshotIdError()


def apply(module):
    """Wraps `EBSBackend.copy_snapshot` of moto's EBS model `module`."""
    backend_class = module.EBSBackend
    if getattr(backend_class.copy_snapshot, "_ektool_patched", False):
        return
    original = backend_class.copy_snapshot

    def copy_snapshot(self, source_snapshot_id, source_region, description, kms_key_id):
        from moto.ec2.models import ec2_backends

        own = ec2_backends[self.account_id][source_region]
        if source_snapshot_id in own.snapshots:
            return original(self, source_snapshot_id, source_region, description, kms_key_id)
        source = _shared_source(self, source_snapshot_id, source_region)
        snapshot_id = module.random_snapshot_id()
        snapshot = module.Snapshot(
            self,
            snapshot_id,
            volume=source.volume,
            description=description,
            encrypted=source.encrypted,
            kms_key_id=kms_key_id,
        )
        self.snapshots[snapshot_id] = snapshot
        return snapshot

    copy_snapshot._ektool_patched = True
    backend_class.copy_snapshot = copy_snapshot


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        apply(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install():
    """Installs the import hook (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
