//! Leases on layers: a CreateContainer that has resolved an image's layers holds them until
//! the container's record (which keeps them from then on) is saved, so garbage collection
//! never removes a layer a container is about to use.
//!
//! The gate orders the two: a create resolves and leases under it, and garbage collection
//! decides and deletes its rows under it. Either the create's lease is there when the
//! collection looks, or the collection's rows are gone when the create looks (and the create
//! fails cleanly: the image or its layer is not found).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::digest::Digest;
use super::{ImageInfo, Images};
use crate::error::{Error, Result};

#[derive(Default)]
pub struct Leases {
    pub(crate) gate: tokio::sync::Mutex<()>,
    counts: Mutex<HashMap<String, usize>>,
}

impl Leases {
    fn add(&self, chains: &[String]) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for chain in chains {
            *counts.entry(chain.clone()).or_default() += 1;
        }
    }

    fn release(&self, chains: &[String]) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for chain in chains {
            if let Some(n) = counts.get_mut(chain) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(chain);
                }
            }
        }
    }

    /// The chain ids leased now.
    pub(crate) fn leased(&self) -> Vec<String> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// Layers held for a container being created; released when dropped.
pub struct LayerLease {
    images: Arc<Images>,
    chains: Vec<String>,
}

impl Drop for LayerLease {
    fn drop(&mut self) {
        self.images.leases.release(&self.chains);
    }
}

/// An image resolved for a new container: its record, its layers' directories (bottom first)
/// and the lease that keeps them.
pub struct LeasedImage {
    pub image: ImageInfo,
    pub layer_dirs: Vec<PathBuf>,
    pub lease: LayerLease,
}

impl Images {
    /// Resolves `name` and leases its layers; None when there is no such image.
    pub async fn lease(self: &Arc<Self>, name: &str) -> Result<Option<LeasedImage>> {
        let _gate = self.leases.gate.lock().await;
        let Some(image) = self.lookup(name)? else {
            return Ok(None);
        };
        let layer_dirs = self.layer_dirs(&image.record.chain_ids, name)?;
        let chains: Vec<String> = image
            .record
            .chain_ids
            .iter()
            .map(|c| c.to_string())
            .collect();
        self.leases.add(&chains);
        Ok(Some(LeasedImage {
            image,
            layer_dirs,
            lease: LayerLease {
                images: self.clone(),
                chains,
            },
        }))
    }

    fn layer_dirs(&self, chains: &[Digest], name: &str) -> Result<Vec<PathBuf>> {
        chains
            .iter()
            .map(|chain| {
                self.snapshot_fs(chain)?.ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "layer {chain} of image {name} is not unpacked"
                    ))
                })
            })
            .collect()
    }
}
