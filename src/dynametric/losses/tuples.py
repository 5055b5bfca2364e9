"""Former home of the index-tuple helpers; they live in :mod:`dynametric.tuples` (below both the losses and the
miners). Re-exported here so that ``from dynametric.losses.tuples import ...`` keeps working."""

from dynametric.tuples import (
    TRIPLETS_PER_CHUNK,
    IndicesTuple,
    anchor_chunks,
    check_indices_tuple,
    check_miner_output,
    convert_to_pairs,
    convert_to_triplets,
    distance_matrix,
    first_positive_pair_per_label,
    get_all_pairs_indices,
    get_all_triplets_indices,
    match_masks,
    padded_positives,
    pair_masks,
    pairs_to_triplets,
    random_triplets,
    triplets_to_pairs,
)

__all__ = [
    "TRIPLETS_PER_CHUNK",
    "IndicesTuple",
    "anchor_chunks",
    "check_indices_tuple",
    "check_miner_output",
    "convert_to_pairs",
    "convert_to_triplets",
    "distance_matrix",
    "first_positive_pair_per_label",
    "get_all_pairs_indices",
    "get_all_triplets_indices",
    "match_masks",
    "pair_masks",
    "padded_positives",
    "pairs_to_triplets",
    "random_triplets",
    "triplets_to_pairs",
]
