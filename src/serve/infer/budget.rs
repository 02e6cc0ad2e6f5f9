//! The server's memory budget for work in flight (issue 23, row 2: each concurrent 4096 x 4096
//! decode cost ~215 MB with nothing bounding how many ran at once): a byte semaphore. Every
//! image decode reserves its estimated peak bytes (`repository::preprocess::plan`, from the
//! header) before it starts and releases them when it ends; a V2 tensor body reserves what
//! parsing it can take. Permits are counted in KiB so that a multi-GiB budget fits the
//! semaphore's `u32` acquisitions.
//!
//! A reservation waits at most [`BUDGET_WAIT`] (the request is then refused with a retryable
//! 503); one larger than the whole budget can never succeed and is refused at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a reservation waits for others to release bytes before the request is refused.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Why bytes could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// More than the whole budget: retrying cannot help.
    #[error("needs about {need_mib} MiB, over the whole decode memory budget of {budget_mib} MiB")]
    TooLarge { need_mib: u64, budget_mib: u64 },
    /// The budget stayed taken by other requests for [`BUDGET_WAIT`].
    #[error("the decode memory budget is taken by other requests")]
    Busy,
}

/// A byte budget shared by every request (cheap to clone).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total_kib: u32,
    wait: Duration,
}

/// Reserved bytes, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

impl MemoryBudget {
    /// A budget of `bytes` (at most 4 TiB).
    pub fn new(bytes: u64) -> Self {
        let total_kib = kib(bytes).clamp(1, u64::from(u32::MAX)) as u32;
        MemoryBudget {
            sem: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait: BUDGET_WAIT,
        }
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_kib) * 1024
    }

    /// Bytes not reserved right now.
    pub fn available_bytes(&self) -> u64 {
        self.sem.available_permits() as u64 * 1024
    }

    /// Whether `bytes` could ever be reserved (at most the whole budget).
    pub fn check(&self, bytes: u64) -> Result<(), BudgetError> {
        if kib(bytes) > u64::from(self.total_kib) {
            return Err(BudgetError::TooLarge {
                need_mib: bytes.div_ceil(1 << 20),
                budget_mib: self.total_bytes() >> 20,
            });
        }
        Ok(())
    }

    /// Reserves `bytes`, waiting at most [`BUDGET_WAIT`] for others to release theirs.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, BudgetError> {
        self.check(bytes)?;
        let need = kib(bytes);
        if need == 0 {
            return Ok(Reservation { _permit: None });
        }
        let acquire = Arc::clone(&self.sem).acquire_many_owned(need as u32);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(Reservation {
                _permit: Some(permit),
            }),
            // The semaphore is never closed; treat it as busy rather than panic.
            Ok(Err(_)) | Err(_) => Err(BudgetError::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reserves_waits_and_refuses() {
        let b = MemoryBudget::new(10 << 20);
        assert_eq!(b.total_bytes(), 10 << 20);
        let big = b.reserve(6 << 20).await.unwrap();
        assert_eq!(b.available_bytes(), 4 << 20);
        // Does not fit now: waits BUDGET_WAIT, then busy.
        assert_eq!(b.reserve(6 << 20).await.unwrap_err(), BudgetError::Busy);
        // Released while waiting: granted.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(6 << 20).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(big);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(b.available_bytes(), 10 << 20);
        // Larger than the whole budget: refused at once, naming both sizes.
        let e = b.reserve(11 << 20).await.unwrap_err();
        assert_eq!(
            e,
            BudgetError::TooLarge {
                need_mib: 11,
                budget_mib: 10
            }
        );
        assert!(b.reserve(0).await.is_ok());
    }
}
