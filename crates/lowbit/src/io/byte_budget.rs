//! A counting semaphore over bytes: the streaming quantizer takes bytes from it before allocating a buffer
//! and gives them back once the buffer has been written out, so the data in flight (and with it the peak
//! memory) never exceeds the budget, however many chunks the reader is ahead.

use std::sync::{Condvar, Mutex};

pub struct ByteBudget {
    limit: u64,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    used: u64,
    closed: bool,
}

impl ByteBudget {
    pub fn new(limit: u64) -> ByteBudget {
        ByteBudget {
            limit,
            state: Mutex::new(State {
                used: 0,
                closed: false,
            }),
            freed: Condvar::new(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Waits until `n` bytes fit and takes them; `false` once the budget is closed (the run is ending).
    /// A request larger than the whole budget waits for an empty budget and then goes through alone, so
    /// one oversized unit cannot deadlock the pipeline.
    pub fn acquire(&self, n: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.closed {
                return false;
            }
            if s.used == 0 || s.used + n <= self.limit {
                s.used += n;
                return true;
            }
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn release(&self, n: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.used = s.used.saturating_sub(n);
        self.freed.notify_all();
    }

    /// Wakes every waiter with `false` from now on.
    pub fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.closed = true;
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::ByteBudget;

    #[test]
    fn waits_for_room_and_lets_an_oversized_request_through_alone() {
        let b = std::sync::Arc::new(ByteBudget::new(10));
        assert!(b.acquire(6));
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.acquire(6));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!t.is_finished(), "6 + 6 > 10 must wait");
        b.release(6);
        assert!(t.join().unwrap());
        b.release(6);
        assert!(b.acquire(25), "alone, an oversized request goes through");
        let b3 = b.clone();
        let t = std::thread::spawn(move || b3.acquire(1));
        b.close();
        assert!(!t.join().unwrap(), "closing wakes waiters with false");
    }
}
