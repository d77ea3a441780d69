"""The stable selection of the study's sets: a keyed hash of (seed, file id) decides everything.

Each usable file gets key = blake2b(file id, key=seed, person=stream). Its bucket is key mod K and
set k takes the N files of bucket k with the smallest keys. So, for the same seed:

- a file that is unusable (skipped) and the same file deleted give the same sets;
- deleting one selected file changes only its own set, by one image (the next file of its bucket
  comes in); deleting an unselected file changes nothing;
- a larger N keeps the smaller N's images (a prefix in key order); changing M leaves the real sets.

That holds while every bucket has N usable files (a pool with some slack: a 30,000-image pool for
5 x 1000 has about 6,000 per bucket). In a pool with little slack a short set is topped up from the
other buckets' leftovers in key order; the build then says the contract is weaker.
"""

import dataclasses
import hashlib

from dataset_build.errors import DatasetToolError
from dataset_build.pools import natural_key

SELECTION = 'blake2b-bucket/1'  # recorded in the manifests; a new rule gets a new name


def file_key(seed, stream, file_id):
    """The file's 128-bit key for one selection stream ('real', 'generated', 'replace')."""
    h = hashlib.blake2b(file_id.encode('utf-8'), digest_size=16, key=int(seed).to_bytes(8, 'little'),
                        person=stream.encode('ascii'))
    return int.from_bytes(h.digest(), 'big')


def choose_groups(ids, num_groups, group_size, seed, stream):
    """Split `ids` into disjoint groups by bucket, each the group_size smallest keys of its bucket.

    Returns:
        (groups: lists of ids in natural order, topped_up: indices of groups filled from leftovers).
    """
    keyed = sorted((file_key(seed, stream, i), i) for i in ids)
    groups, leftovers = [[] for _ in range(num_groups)], []
    for key, file_id in keyed:
        group = groups[key % num_groups]
        (group if len(group) < group_size else leftovers).append(file_id)
    topped_up = [g for g, group in enumerate(groups) if len(group) < group_size]
    for g in topped_up:
        need = group_size - len(groups[g])
        groups[g] += leftovers[:need]
        leftovers = leftovers[need:]
    return [sorted(g, key=natural_key) for g in groups], topped_up


@dataclasses.dataclass
class StudyPlan:
    """Per set k: `subsets[k]` real ids in slot order, `replaced[k]` the ascending slots taken over in
    the mix, `generated[k]` the generated ids given to those slots in order."""
    subsets: list
    replaced: list
    generated: list
    topped_up: list  # names of the streams/sets that needed leftovers (the weaker contract)


def _replaced_slots(subset, num_generated, seed):
    ranked = sorted(range(len(subset)), key=lambda slot: file_key(seed, 'replace', subset[slot]))
    return sorted(ranked[:num_generated])


def plan_study_sets(real_ids, gen_ids, num_subsets, subset_size, num_generated, seed):
    """Choose the real subsets, the generated images and the replaced slots from the usable files.

    Args:
        real_ids, gen_ids: Usable file ids of each pool.
        num_subsets: K.  subset_size: N.  num_generated: M (<= N).  seed: 0 <= seed < 2**32.

    Returns:
        StudyPlan.
    """
    K, N, M = num_subsets, subset_size, num_generated
    if len(real_ids) < K * N:
        raise DatasetToolError(f'--celeba-dir: {len(real_ids)} usable real images, need '
                               f'--num-subsets x --subset-size = {K} x {N} = {K * N}')
    if len(gen_ids) < K * M:
        raise DatasetToolError(f'--generated-dir: {len(gen_ids)} usable generated images, need '
                               f'--num-subsets x --num-generated = {K} x {M} = {K * M}')
    subsets, real_short = choose_groups(real_ids, K, N, seed, 'real')
    generated, gen_short = choose_groups(gen_ids, K, M, seed, 'generated') if M else ([[] for _ in range(K)], [])
    plan = StudyPlan(subsets=subsets, replaced=[_replaced_slots(s, M, seed) for s in subsets],
                     generated=generated,
                     topped_up=[f'real set {g + 1}' for g in real_short] + [f'mix {g + 1}' for g in gen_short])
    # The study's premise: no image is shared between subsets, none generated is reused.
    assert len({i for s in plan.subsets for i in s}) == K * N, 'real subsets overlap'
    assert len({i for g in plan.generated for i in g}) == K * M, 'a generated image is used twice'
    return plan
