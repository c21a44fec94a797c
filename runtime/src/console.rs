//! The node's console: a pty whose slave becomes /dev/console and whose master the runtime
//! keeps open for the node's whole life (systemd hangs silently on a console that is not a tty).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};

use crate::Error;

/// The console's size as the node sees it (`stty size`): wide enough for systemd's status lines.
const CONSOLE_COLUMNS: u16 = 200;
/// Rows of the console.
const CONSOLE_ROWS: u16 = 50;

/// The master side of a node's console.
pub(crate) struct Console {
    pub master: OwnedFd,
    /// The slave's path on the host, bind-mounted over the node's /dev/console.
    pub slave: PathBuf,
    /// Our own open slave: without one the master reports hang-up until the node opens it.
    _slave_fd: OwnedFd,
}

impl Console {
    /// Opens a new pty on the host's devpts.
    pub(crate) fn open(idmap: &crate::IdMap) -> Result<Console, Error> {
        let master =
            posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(Error::sys("opening a pty for the console"))?;
        grantpt(&master).map_err(Error::sys("grantpt"))?;
        unlockpt(&master).map_err(Error::sys("unlockpt"))?;
        let slave = PathBuf::from(ptsname_r(&master).map_err(Error::sys("ptsname"))?);
        let slave_fd = nix::fcntl::open(
            &slave,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(Error::sys("opening the console's pty slave"))?;
        // Node root must own its console (group tty, 5), as the node sees it.
        if let (Some(uid), Some(gid)) = (idmap.host_uid(0), idmap.host_uid(5)) {
            if uid != nix::unistd::Uid::effective().as_raw() {
                let _ = nix::unistd::fchown(
                    &slave_fd,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                );
            }
        }
        // A wide console: with none set (0x0) systemd assumes 80 columns and cuts its status
        // lines to fit, ellipsis and colour codes cut in half included. A console relayed to
        // a terminal gets that terminal's size instead (`hutch run --boot`).
        let _ = set_window_size(master.as_fd(), CONSOLE_ROWS, CONSOLE_COLUMNS);
        // Raw output: the node's bytes reach our logs as it wrote them (no \n to \r\n).
        if let Ok(mut t) = nix::sys::termios::tcgetattr(&slave_fd) {
            t.output_flags.remove(nix::sys::termios::OutputFlags::ONLCR);
            let _ = nix::sys::termios::tcsetattr(&slave_fd, nix::sys::termios::SetArg::TCSANOW, &t);
        }
        Ok(Console {
            master: master.into(),
            slave,
            _slave_fd: slave_fd,
        })
    }

    /// The master, to read what the node prints.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }
}

/// Sets a pty's window size (rows, columns) through its master: what `stty size` shows on
/// its slave; the kernel sends SIGWINCH to the slave's foreground process group.
pub fn set_window_size(master: BorrowedFd, rows: u16, cols: u16) -> Result<(), nix::errno::Errno> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer that outlives the call.
    nix::errno::Errno::result(unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&master), libc::TIOCSWINSZ, &size) }).map(drop)
}
