//! The containers the daemon knows, in memory, each with its own locks: one state machine per
//! container. The store stays the source of truth across restarts; this table is what every
//! RPC reads, and every change to a record goes through `Entry::change`, which saves it and
//! publishes it in one step, so readers never write and never see an unsaved state.
//!
//! Two locks per container:
//! - `op` serialises the lifecycle RPCs (Start, Stop, Remove, UpdateContainerResources): a
//!   second StartContainer waits for the first and then finds the container running;
//! - `write` serialises changes to the record, from those RPCs and from the pod agent's events
//!   (starts and exits); it is held only while one change is decided and saved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::cri;

use super::record::{ContainerRecord, ContainerState};
use crate::agent::ExitStatus;
use crate::sandbox::record::AgentProcess;

pub struct Entry {
    pub op: tokio::sync::Mutex<()>,
    write: tokio::sync::Mutex<()>,
    /// The record as last saved; None once the container is removed.
    current: Mutex<Option<ContainerRecord>>,
    /// The state as last saved, for those who wait for a change (StopContainer).
    state: tokio::sync::watch::Sender<ContainerState>,
}

/// A change under an entry's write lock: the record as it is, to be changed in place.
pub struct Change<'a> {
    entry: &'a Entry,
    _write: tokio::sync::MutexGuard<'a, ()>,
    pub record: ContainerRecord,
}

impl Entry {
    fn new(record: ContainerRecord) -> Entry {
        Entry {
            op: tokio::sync::Mutex::new(()),
            write: tokio::sync::Mutex::new(()),
            state: tokio::sync::watch::channel(record.state).0,
            current: Mutex::new(Some(record)),
        }
    }

    /// The record as last saved; None once removed.
    pub fn current(&self) -> Option<ContainerRecord> {
        // A poisoned lock only means a thread panicked between two statements that cannot
        // leave the Option half-written.
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Starts a change: None when the container was removed meanwhile.
    pub async fn change(&self) -> Option<Change<'_>> {
        let write = self.write.lock().await;
        let record = self.current()?;
        Some(Change {
            entry: self,
            _write: write,
            record,
        })
    }

    /// Waits until the container's state is not `state` any more.
    pub async fn wait_state_changes_from(&self, state: ContainerState) {
        let mut receiver = self.state.subscribe();
        // An error means the sender is gone with the entry: nothing will change any more.
        let _ = receiver.wait_for(|s| *s != state).await;
    }
}

impl Change<'_> {
    /// Makes the changed record the current one (after it was saved).
    pub fn publish(self) {
        let state = self.record.state;
        *self.entry.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.record);
        self.entry.state.send_replace(state);
    }

    /// The container is gone (its store row deleted).
    pub fn publish_removed(self) {
        *self.entry.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Every container, by id.
#[derive(Default)]
pub struct Table {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
}

impl Table {
    pub fn insert(&self, record: ContainerRecord) -> Arc<Entry> {
        let id = record.id.clone();
        let entry = Arc::new(Entry::new(record));
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, entry.clone());
        entry
    }

    pub fn remove(&self, id: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// A container by its full id.
    pub fn find_exact(&self, id: &str) -> Option<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// A container by id, or by an id prefix that names exactly one.
    pub fn find(&self, id: &str) -> Option<Arc<Entry>> {
        if id.is_empty() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get(id) {
            return Some(entry.clone());
        }
        let mut matching = entries.iter().filter(|(k, _)| k.starts_with(id));
        match (matching.next(), matching.next()) {
            (Some((_, entry)), None) => Some(entry.clone()),
            _ => None,
        }
    }

    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every container's record as last saved.
    pub fn records(&self) -> Vec<ContainerRecord> {
        self.entries().iter().filter_map(|e| e.current()).collect()
    }
}

/// What the pod agent says of a container: started (pid, when) and perhaps exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentView {
    pub pid: i32,
    pub started_at: i64,
    pub exit: Option<ExitStatus>,
}

/// Brings a record in line with what its agent says. Returns the events this makes, in order
/// (none when the record already says as much); a container is started and stopped once.
pub fn apply_agent_view(
    record: &mut ContainerRecord,
    view: AgentView,
) -> Vec<cri::ContainerEventType> {
    let mut events = Vec::new();
    if record.state == ContainerState::Created {
        mark_running(record, view.pid, view.started_at);
        events.push(cri::ContainerEventType::ContainerStartedEvent);
    }
    if record.state == ContainerState::Running
        && let Some(exit) = view.exit
    {
        record.record_exit(&exit);
        events.push(cri::ContainerEventType::ContainerStoppedEvent);
    }
    events
}

/// Created → Running with the process the agent started.
pub fn mark_running(record: &mut ContainerRecord, pid: i32, started_at: i64) {
    record.state = ContainerState::Running;
    record.started_at = started_at;
    record.process = Some(AgentProcess {
        pid,
        start_time: crate::sandbox::record::start_time(pid).unwrap_or(0),
    });
}

/// Created → Exited: the agent could not start it.
pub fn mark_start_failed(record: &mut ContainerRecord, message: String, now: i64) {
    record.state = ContainerState::Exited;
    record.finished_at = now;
    record.started_at = 0;
    record.exit_code = 128;
    record.reason = "StartError".into();
    record.message = message;
    record.process = None;
}

/// Running → Exited when the agent that ran it is gone: its exit file if it wrote one, else
/// what is known.
pub fn mark_agent_gone(record: &mut ContainerRecord, exit: Option<ExitStatus>, now: i64) {
    match exit {
        Some(exit) => record.record_exit(&exit),
        None => {
            record.state = ContainerState::Exited;
            record.finished_at = now;
            record.exit_code = 255;
            record.reason = "Error".into();
            record.message = "the pod agent that ran the container is gone".into();
            record.process = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::record::test_record as record;
    use cri::ContainerEventType::{ContainerStartedEvent, ContainerStoppedEvent};

    fn exited(code: i32) -> Option<ExitStatus> {
        Some(ExitStatus {
            exit_code: code,
            signal: 0,
            finished_at: 30,
            oom_killed: false,
        })
    }

    #[test]
    fn a_start_the_daemon_missed_is_recorded_once() {
        let mut r = record(ContainerState::Created);
        let view = AgentView {
            pid: 4242,
            started_at: 20,
            exit: None,
        };
        assert_eq!(apply_agent_view(&mut r, view), vec![ContainerStartedEvent]);
        assert_eq!(r.state, ContainerState::Running);
        assert_eq!(r.started_at, 20);
        assert_eq!(r.process.map(|p| p.pid), Some(4242));
        // The same news again (a reconnect's snapshot) changes nothing.
        assert_eq!(apply_agent_view(&mut r, view), vec![]);
    }

    #[test]
    fn an_exit_is_recorded_once() {
        let mut r = record(ContainerState::Running);
        r.started_at = 20;
        let view = AgentView {
            pid: 4242,
            started_at: 20,
            exit: exited(3),
        };
        assert_eq!(apply_agent_view(&mut r, view), vec![ContainerStoppedEvent]);
        assert_eq!((r.state, r.exit_code), (ContainerState::Exited, 3));
        assert_eq!(r.reason, "Error");
        assert_eq!(apply_agent_view(&mut r, view), vec![]);
    }

    #[test]
    fn a_start_and_exit_both_missed_make_both_events() {
        let mut r = record(ContainerState::Created);
        let view = AgentView {
            pid: 7,
            started_at: 20,
            exit: exited(0),
        };
        assert_eq!(
            apply_agent_view(&mut r, view),
            vec![ContainerStartedEvent, ContainerStoppedEvent]
        );
        assert_eq!((r.started_at, r.finished_at), (20, 30));
        assert_eq!(r.reason, "Completed");
    }

    #[test]
    fn an_exited_container_is_never_resurrected() {
        let mut r = record(ContainerState::Exited);
        r.reason = "StartError".into();
        let view = AgentView {
            pid: 7,
            started_at: 20,
            exit: None,
        };
        assert_eq!(apply_agent_view(&mut r, view), vec![]);
        assert_eq!(r.state, ContainerState::Exited);
        assert_eq!(r.reason, "StartError");
    }

    #[test]
    fn a_failed_start_and_a_lost_agent() {
        let mut r = record(ContainerState::Created);
        mark_start_failed(&mut r, "exec: nope".into(), 9);
        assert_eq!((r.state, r.exit_code), (ContainerState::Exited, 128));
        assert_eq!(r.reason, "StartError");
        let mut r = record(ContainerState::Running);
        mark_agent_gone(&mut r, None, 9);
        assert_eq!((r.exit_code, r.finished_at), (255, 9));
        let mut r = record(ContainerState::Running);
        mark_agent_gone(&mut r, exited(137), 9);
        assert_eq!((r.exit_code, r.finished_at), (137, 30));
    }

    #[tokio::test]
    async fn a_removed_entry_takes_no_more_changes() {
        let table = Table::default();
        let entry = table.insert(record(ContainerState::Running));
        let change = entry.change().await.expect("present");
        change.publish_removed();
        table.remove("c1");
        assert!(entry.change().await.is_none());
        assert!(entry.current().is_none());
        assert!(table.find("c1").is_none());
    }

    #[tokio::test]
    async fn waiters_see_the_published_state() {
        let table = Table::default();
        let entry = table.insert(record(ContainerState::Running));
        let waiter = {
            let entry = entry.clone();
            tokio::spawn(
                async move { entry.wait_state_changes_from(ContainerState::Running).await },
            )
        };
        let mut change = entry.change().await.expect("present");
        change.record.state = ContainerState::Exited;
        change.publish();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }

    #[test]
    fn prefixes_name_one_container() {
        let table = Table::default();
        let mut a = record(ContainerState::Created);
        a.id = "abc1".into();
        let mut b = record(ContainerState::Created);
        b.id = "abd2".into();
        table.insert(a);
        table.insert(b);
        assert!(table.find("ab").is_none());
        assert_eq!(
            table.find("abc").and_then(|e| e.current()).map(|r| r.id),
            Some("abc1".to_string())
        );
        assert!(table.find("").is_none());
    }
}
