//! Test-only crash points, compiled in with the `failpoints` feature and
//! nowhere else: the plugin aborts right after the Nth provider call or
//! storage write, so that the tests can prove that repeating the request
//! after the host relaunches the plugin converges at every step.
//!
//! `KEYMGMT_FAILPOINTS_FILE` names a file holding `<site> <n> <nonce>`
//! (`provider` or `storage`). Hits are counted from when that content
//! first appears; at the Nth the file is removed (so the relaunched plugin
//! runs normally) and the process aborts.

/// Where a crash can be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// After a call to a KMS provider returned (it may have taken effect).
    ProviderCall,
    /// After a storage write (put or delete) returned.
    StorageWrite,
}

#[cfg(feature = "failpoints")]
pub fn hit(site: Site) {
    use std::sync::Mutex;

    /// The file content seen last, and the hits counted since.
    static SEEN: Mutex<(String, u32)> = Mutex::new((String::new(), 0));

    let Some(path) = std::env::var_os("KEYMGMT_FAILPOINTS_FILE") else {
        return;
    };
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(content) = std::fs::read_to_string(&path) else {
        *seen = (String::new(), 0);
        return;
    };
    if content != seen.0 {
        *seen = (content.clone(), 0);
    }
    let mut words = content.split_whitespace();
    let wanted = match words.next() {
        Some("provider") => Site::ProviderCall,
        Some("storage") => Site::StorageWrite,
        _ => return,
    };
    let Some(n) = words.next().and_then(|n| n.parse::<u32>().ok()) else {
        return;
    };
    if wanted != site {
        return;
    }
    seen.1 += 1;
    if seen.1 == n {
        let _ = std::fs::remove_file(&path);
        log::warn!("failpoint: aborting after {site:?} {n}");
        log::logger().flush();
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_site: Site) {}
