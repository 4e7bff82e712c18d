//! MPI's initialization, explicit and owned.

use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use super::Rank;
use crate::{Error, Result};

/// MPI, initialized by [`initialize`](Self::initialize) and finalized when dropped.
///
/// Not `Send`: MPI's communicator handles belong to the thread that made them here. Senders and
/// receivers borrow the context, so none can outlive `MPI_Finalize`.
pub struct MpiContext {
    // `world` must drop before `universe` (which finalizes MPI): fields drop in order.
    world: SimpleCommunicator,
    threading: Threading,
    universe: Universe,
}

impl std::fmt::Debug for MpiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiContext")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("threading", &self.threading)
            .finish()
    }
}

impl MpiContext {
    /// Initializes MPI (`MPI_Init_thread`, asking for `MPI_THREAD_MULTIPLE`). lava-flow calls MPI
    /// only from the thread that uses a sender or receiver, so any level from `FUNNELED` up
    /// works; [`threading`](Self::threading) says what the library granted.
    ///
    /// Fails where MPI was already initialized in this process (by this or another library):
    /// there is one MPI per process, and the owner of the initialization finalizes it.
    pub fn initialize() -> Result<MpiContext> {
        let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Multiple) else {
            return Err(Error::invalid(
                "initializing MPI",
                "MPI is already initialized in this process (MPI_Initialized is true; MPI allows one \
                 MPI_Init per process)",
                "create one MpiContext per process and share it",
            ));
        };
        if threading == Threading::Single {
            return Err(Error::unsupported(
                "MPI with threads",
                format!("the MPI library granted only {threading:?}"),
                "MPI_Init_thread's `provided` level",
                "use an MPI built with thread support (Open MPI's default is MPI_THREAD_MULTIPLE)",
            ));
        }
        let world = universe.world();
        Ok(MpiContext { world, threading, universe })
    }

    /// This process's rank in `MPI_COMM_WORLD`.
    pub fn rank(&self) -> Rank {
        self.world.rank()
    }

    /// How many ranks `MPI_COMM_WORLD` has.
    pub fn size(&self) -> Rank {
        self.world.size()
    }

    /// The thread level MPI granted.
    pub fn threading(&self) -> Threading {
        self.threading
    }

    /// The MPI library's version string (`MPI_Get_library_version`).
    pub fn library_version(&self) -> String {
        mpi::environment::library_version().unwrap_or_else(|_| "(not UTF-8)".into())
    }

    /// This rank's host name (`MPI_Get_processor_name`).
    pub fn host_name(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "(not UTF-8)".into())
    }

    /// The lowest rank running on `host`, or `None`. **Collective**: every rank must call it (it
    /// gathers every rank's host name).
    pub fn rank_of_host(&self, host: &str) -> Option<Rank> {
        const NAME: usize = 256;
        let mut mine = [0u8; NAME];
        let name = self.host_name();
        let len = name.len().min(NAME);
        mine[..len].copy_from_slice(&name.as_bytes()[..len]);
        let mut all = vec![0u8; NAME * self.size() as usize];
        self.world.all_gather_into(&mine[..], &mut all[..]);
        all.chunks(NAME).position(|n| n.split(|&b| b == 0).next() == Some(host.as_bytes())).map(|r| r as Rank)
    }

    /// Waits until every rank has reached this call (`MPI_Barrier`). **Collective.**
    pub fn barrier(&self) {
        self.world.barrier();
    }

    pub(super) fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// Checks that `peer` is another rank of the world.
    pub(super) fn check_peer(&self, peer: Rank) -> Result<()> {
        if peer < 0 || peer >= self.size() || peer == self.rank() {
            return Err(Error::invalid(
                format!("peer rank {peer}"),
                format!("MPI_COMM_WORLD has ranks 0 to {} and this is rank {}", self.size() - 1, self.rank()),
                "name another rank of the job",
            ));
        }
        Ok(())
    }

    #[doc(hidden)]
    pub fn universe(&self) -> &Universe {
        &self.universe
    }
}
