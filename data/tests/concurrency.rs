//! Readers never see partial state; concurrent writers lose no history entry.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use berth_data::{DataError, Library};
use common::*;

#[test]
fn library_is_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Library>();
}

#[test]
fn readers_see_complete_versions_while_writers_add() {
    let (_dir, lib) = library();
    let src = fixture("sst_ndjfm_anom.nc");
    let finished = AtomicUsize::new(0);
    let done = &finished;
    std::thread::scope(|s| {
        // Two writers on the same name, different chunkings: 2 x 5 distinct versions.
        for w in 0..2u64 {
            let lib = lib.clone();
            let src = src.clone();
            s.spawn(move || {
                for t in 0..5u64 {
                    add(
                        &lib,
                        "sst",
                        &[src.clone()],
                        chunks(&[("time", 1 + w * 5 + t)]),
                    );
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        // A reader (another handle on the same root, as a web server would have).
        let reader = Library::open(lib.root()).unwrap();
        s.spawn(move || {
            let mut seen = 0;
            while done.load(Ordering::SeqCst) < 2 || seen == 0 {
                match reader.resolve("sst") {
                    Ok(v) => {
                        reader
                            .verify(&format!("sst@{}", v.id()))
                            .expect("a registered version is complete");
                        seen += 1;
                    }
                    Err(DataError::UnknownName(_)) => {}
                    Err(e) => panic!("reader saw an error: {e}"),
                }
                for entry in reader.ls().unwrap() {
                    assert!(reader
                        .root()
                        .join("versions")
                        .join(&entry.newest.version)
                        .join("zarr.json")
                        .is_file());
                }
            }
        });
    });
    let hist = lib.history("sst").unwrap();
    assert_eq!(hist.len(), 10, "no lost update of the name's history");
    for v in hist {
        lib.verify(&format!("sst@{}", v.id())).unwrap();
    }
    assert_eq!(
        std::fs::read_dir(lib.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn stale_temporaries_of_dead_processes_are_removed() {
    let (_dir, lib) = library();
    // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
    let stale = lib.root().join("tmp/ingest-99999999-1-0");
    std::fs::create_dir_all(stale.join("sst")).unwrap();
    let mine = lib
        .root()
        .join(format!("tmp/ingest-{}-1-0", std::process::id()));
    std::fs::create_dir_all(&mine).unwrap();
    let again = Library::open(lib.root()).unwrap();
    assert!(!stale.exists());
    assert!(mine.exists(), "a live process's temporary store stays");
    drop(again);
}
