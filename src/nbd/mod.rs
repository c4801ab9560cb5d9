//! An NBD server for images: what `cowimg nbd` (qemu-nbd's drop-in) serves, in the
//! library so that it can be fuzzed and embedded. [`serve`] runs one connection over
//! any reader and writer; the caller accepts connections and decides on threads.
//!
//! ```no_run
//! use cowimg::nbd::{serve, Export};
//! use cowimg::{Image, OpenOptions, SharedImage};
//! use std::net::TcpListener;
//! use std::sync::{atomic::AtomicBool, Arc};
//!
//! let image = Image::open("disk.qcow2", &OpenOptions::new())?;
//! let exports = [Export::new("", Arc::new(SharedImage::new(image)))];
//! let stop = AtomicBool::new(false);
//! for stream in TcpListener::bind("127.0.0.1:10809")?.incoming() {
//!     let stream = stream?;
//!     serve(stream.try_clone()?, stream, &exports, &stop)?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod protocol;
mod server;

pub use server::{serve, Export};
