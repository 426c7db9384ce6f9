//! KV caches of finished generations, kept so that a conversation's next turn — whose prompt
//! starts with everything the last one ran — only runs its new tokens. Bounded by a memory
//! budget; the least recently used cache goes first.

use super::error::Result;
use super::kv_cache::SequenceCache;
use super::model::Transformer;

/// 1 GiB holds about 7,000 positions of SmolLM3-3B's f32 cache (147 kB each): a few chats'
/// histories next to the 2 GB of weights.
pub const DEFAULT_BUDGET_BYTES: usize = 1 << 30;

struct Entry {
    tokens: Vec<u32>,
    cache: SequenceCache,
    last_used: u64,
}

/// The kept caches; see the module doc.
pub struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    clock: u64,
}

impl PrefixCache {
    /// `budget_bytes` 0 keeps nothing: every prompt runs from scratch.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            budget_bytes,
            clock: 0,
        }
    }

    /// The kept cache that shares the longest prefix with `prompt`, cut to that prefix (and
    /// to one token short of the whole prompt, whose last logits are needed), or a fresh one.
    pub fn take(&mut self, model: &Transformer, prompt: &[u32]) -> Result<SequenceCache> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt)))
            .max_by_key(|&(_, n)| n);
        match best {
            Some((i, shared)) if shared > 0 => {
                let mut cache = self.entries.swap_remove(i).cache;
                cache.truncate(shared.min(prompt.len().saturating_sub(1)))?;
                Ok(cache)
            }
            _ => Ok(model.new_cache()),
        }
    }

    /// Keeps `cache`, which holds `tokens`, then drops the least recently used caches until
    /// the budget holds.
    pub fn put(&mut self, tokens: Vec<u32>, cache: SequenceCache) {
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            cache,
            last_used: self.clock,
        });
        while self.bytes() > self.budget_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
    }

    /// Memory the kept caches hold.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.allocated_bytes()).sum()
    }

    /// How many caches are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
