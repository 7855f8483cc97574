//! The load slots (`cache.max_concurrent_loads`), taken by priority: a load started for a
//! `batch` request (`x-mm-priority`) may hold only `cache.batch_load_share` of them, and
//! while interactive and batch loads both wait for a slot, interactive ones go first. Each
//! priority waits in arrival order.
//!
//! A slot is handed over under one lock: a waiter that gives up (its load's timeout) leaves
//! the queue when its future is dropped, and a freed slot wakes every waiter, the first
//! eligible of which takes it (at most `cache.max_waiting` wait, and a load is
//! milliseconds to seconds, so waking them all costs nothing that matters).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use manymodels_contract::Priority;
use tokio::sync::Notify;

/// The load slots and who waits for them.
pub(super) struct Slots {
    state: Mutex<State>,
    freed: Notify,
    total: usize,
    batch_max: usize,
}

#[derive(Default)]
struct State {
    busy: usize,
    batch_busy: usize,
    /// Tickets of the waiters, by priority (interactive, batch), lowest first.
    waiting: [BTreeSet<u64>; 2],
    next_ticket: u64,
}

fn class(priority: Priority) -> usize {
    match priority {
        Priority::Interactive => 0,
        Priority::Batch => 1,
    }
}

impl Slots {
    /// `total` slots, of which batch loads may hold `batch_max` (at least 1, at most all).
    pub(super) fn new(total: usize, batch_max: usize) -> Arc<Self> {
        Arc::new(Slots {
            state: Mutex::default(),
            freed: Notify::new(),
            total: total.max(1),
            batch_max: batch_max.clamp(1, total.max(1)),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot a load of `priority` may take; the slot is given back when the
    /// returned guard drops.
    pub(super) async fn acquire(self: &Arc<Self>, priority: Priority) -> Slot {
        let c = class(priority);
        let ticket = {
            let mut state = self.state();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.waiting[c].insert(ticket);
            ticket
        };
        // Leaves the queue if this future is dropped while it waits.
        let mut queued = Queued {
            slots: self,
            class: c,
            ticket: Some(ticket),
        };
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.state();
                if self.may_take(&state, c, ticket) {
                    state.waiting[c].remove(&ticket);
                    queued.ticket = None;
                    state.busy += 1;
                    if c == 1 {
                        state.batch_busy += 1;
                    }
                    drop(state);
                    // Another waiter may be eligible too (a batch one behind an interactive
                    // one that just took the last interactive turn).
                    self.freed.notify_waiters();
                    return Slot {
                        slots: self.clone(),
                        batch: c == 1,
                    };
                }
            }
            freed.await;
        }
    }

    /// Whether the waiter `ticket` of class `c` may take a slot now: one is free, it is the
    /// first of its class, and (batch) no interactive load waits and the batch share has
    /// room.
    fn may_take(&self, state: &State, c: usize, ticket: u64) -> bool {
        if state.busy >= self.total || state.waiting[c].first() != Some(&ticket) {
            return false;
        }
        c == 0 || (state.waiting[0].is_empty() && state.batch_busy < self.batch_max)
    }

    fn release(&self, batch: bool) {
        {
            let mut state = self.state();
            state.busy -= 1;
            if batch {
                state.batch_busy -= 1;
            }
        }
        self.freed.notify_waiters();
    }

    /// Slots held now, in all and by batch loads (for tests).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let state = self.state();
        (state.busy, state.batch_busy)
    }
}

/// A waiter's place in the queue, removed if it stops waiting.
struct Queued<'a> {
    slots: &'a Slots,
    class: usize,
    ticket: Option<u64>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.slots.state().waiting[self.class].remove(&ticket);
            // Whoever was behind it may go now.
            self.slots.freed.notify_waiters();
        }
    }
}

/// A held load slot, given back on drop.
pub(super) struct Slot {
    slots: Arc<Slots>,
    batch: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.batch);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Batch loads hold at most their share of the slots; with both kinds waiting, every
    /// interactive load starts before any batch one; each kind starts in arrival order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batch_loads_stay_within_their_share_and_interactive_ones_go_first() {
        let slots = Slots::new(4, 2);
        let started = Arc::new(Mutex::new(Vec::new()));
        let most_batch = Arc::new(Mutex::new(0usize));
        let mut tasks = Vec::new();
        // Eight batch loads first, then (while they queue) four interactive ones.
        for (i, priority) in (0..8)
            .map(|_| Priority::Batch)
            .chain((0..4).map(|_| Priority::Interactive))
            .enumerate()
        {
            let (slots, started, most_batch) = (slots.clone(), started.clone(), most_batch.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(priority).await;
                let (_, batch) = slots.held();
                {
                    let mut most = most_batch.lock().unwrap();
                    *most = (*most).max(batch);
                }
                started.lock().unwrap().push((i, priority));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }));
            // Let each waiter queue before the next arrives.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(slots.held(), (0, 0), "every slot given back");
        assert_eq!(
            *most_batch.lock().unwrap(),
            2,
            "batch held at most its share"
        );
        let order = started.lock().unwrap().clone();
        assert_eq!(order.len(), 12);
        // The first two batch loads took their share at once; the interactive ones, which
        // arrived after the other six batch loads queued, all started before those six.
        let first_interactive_done = order
            .iter()
            .rposition(|(_, p)| *p == Priority::Interactive)
            .unwrap();
        let waiting_batch_first = order.iter().position(|(i, _)| (2..8).contains(i)).unwrap();
        assert!(
            first_interactive_done < waiting_batch_first,
            "interactive loads go first: {order:?}"
        );
        let batch: Vec<usize> = order
            .iter()
            .filter(|(_, p)| *p == Priority::Batch)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(batch, (0..8).collect::<Vec<_>>(), "arrival order");
    }

    /// A waiter that gives up leaves the queue: the next one gets the slot.
    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_others_waiting() {
        let slots = Slots::new(1, 1);
        let held = slots.acquire(Priority::Interactive).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            slots.acquire(Priority::Interactive),
        )
        .await;
        assert!(gave_up.is_err());
        let next = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Priority::Batch).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        let slot = tokio::time::timeout(Duration::from_secs(2), next)
            .await
            .expect("the batch waiter gets the freed slot")
            .unwrap();
        assert_eq!(slots.held(), (1, 1));
        drop(slot);
        assert_eq!(slots.held(), (0, 0));
    }
}
