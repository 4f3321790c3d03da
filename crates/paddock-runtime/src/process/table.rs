//! The runtime's processes, by pid, with exited ones kept for a while so a
//! late `Connect` still learns how they ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::handle::Proc;
use crate::proto::process::__buffa::oneof::process_selector::Selector;

/// How long an exited process stays visible to `Connect`.
const RETAIN_EXITED: Duration = Duration::from_secs(60);

#[derive(Default, Clone)]
pub struct ProcessTable {
    procs: Arc<Mutex<HashMap<u32, Arc<Proc>>>>,
}

impl ProcessTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, proc: Arc<Proc>) {
        self.lock().insert(proc.pid, proc);
    }

    /// Forgets an exited process after the retention period.
    pub fn retire_later(&self, pid: u32) {
        let procs = self.procs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETAIN_EXITED).await;
            procs.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        });
    }

    /// Finds a process by pid or tag; running ones win over exited ones.
    pub fn select(&self, selector: Option<&Selector>) -> Option<Arc<Proc>> {
        let procs = self.lock();
        match selector? {
            Selector::Pid(pid) => procs.get(pid).cloned(),
            Selector::Tag(tag) => procs
                .values()
                .filter(|p| p.tag.as_deref() == Some(tag.as_str()))
                .max_by_key(|p| p.exit().is_none())
                .cloned(),
        }
    }

    /// Processes that are still running.
    pub fn running(&self) -> Vec<Arc<Proc>> {
        let mut list: Vec<_> = self
            .lock()
            .values()
            .filter(|p| p.exit().is_none())
            .cloned()
            .collect();
        list.sort_by_key(|p| p.pid);
        list
    }
}
