//! Maps and sets made and dropped within one decision, validation or diff, keyed by step ids
//! (or positions): hashed with foldhash, seeded per process, instead of std's SipHash, which
//! took a third of an intervention's instructions on a 150-step plan. Nothing here is kept,
//! stored or iterated into output, so their order (random either way) never shows.

/// The hasher of [`HashMap`] and [`HashSet`].
pub(crate) type Hasher = foldhash::fast::RandomState;

pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, Hasher>;

pub(crate) type HashSet<K> = std::collections::HashSet<K, Hasher>;

/// An empty [`HashSet`] with room for `n`.
pub(crate) fn set_with_capacity<K>(n: usize) -> HashSet<K> {
    HashSet::with_capacity_and_hasher(n, Hasher::default())
}

/// An empty [`HashMap`] with room for `n`.
pub(crate) fn map_with_capacity<K, V>(n: usize) -> HashMap<K, V> {
    HashMap::with_capacity_and_hasher(n, Hasher::default())
}
