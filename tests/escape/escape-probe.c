/*
 * escape-probe: one escape attempt per invocation, from inside a hutch node, reported as one
 * line `NAME ok` (the attempt worked) or `NAME errno=ENAME` (the kernel refused it), plus
 * `NAME bytes=N` for reads.
 *
 * Why: tests/escape.rs needs the exact errno of attempts busybox has no applet for (ptrace,
 * pidfd_open, settimeofday, iopl, ...) and writes that must not change the host even where they
 * are allowed. Every attempt is chosen so that success changes nothing outside the node:
 * `open-w` opens for writing and closes without writing a byte, `settime` sets the clock to the
 * time it just read, `connect` only targets an address the node has no route to and closes at
 * once, `ptrace` detaches at once. tests/escape.rs compiles it with `gcc -static` and binds it
 * into the node read-only.
 *
 * usage: escape-probe ATTEMPT [ARGS...]; exit 0 after reporting, 2 on a usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/inotify.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

static int report(const char *name, long rc)
{
	if (rc < 0) {
		const char *e = strerrorname_np(errno);
		if (e)
			printf("%s errno=%s\n", name, e);
		else
			printf("%s errno=%d\n", name, errno);
	} else {
		printf("%s ok\n", name);
	}
	fflush(stdout);
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: escape-probe open-w PATH | read PATH | mknod-blk PATH MAJ MIN |\n"
			"  mknod-chr PATH MAJ MIN | ptrace PID | kill0 PID | pidfd PID | getfd PID |\n"
			"  peer-pidfd SOCKET | inotify-fill |\n"
			"  connect ADDR PORT | sethostname NAME | settimeofday | clock_settime |\n"
			"  clock_adjtime | iopl | ioperm | scan-pids | chroot-escape HOSTPATH | reboot |\n"
			"  create PATH | mount FSTYPE|- SRC|- TARGET FLAG,...|none [DATA] | umount TARGET\n");
	return 2;
}

/* Open for writing and close at once: proves write access without changing anything. */
static int open_w(const char *path)
{
	int fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd >= 0)
		close(fd);
	return report("open-w", fd);
}

/* Create a new file and remove it at once: proves the directory is writable, leaves nothing. */
static int create(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC, 0600);
	int saved = errno;
	if (fd >= 0) {
		close(fd);
		unlink(path);
	}
	errno = saved;
	return report("create", fd);
}

/*
 * mount(2) with flags by name (remount, bind, rdonly, rec; `none` for no flag) and optional data;
 * the target is created if missing.
 */
static int do_mount(const char *fstype, const char *src, const char *target, const char *flags,
		    const char *data)
{
	unsigned long f = 0;
	char buf[256];
	snprintf(buf, sizeof buf, "%s", flags);
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (!strcmp(t, "remount"))
			f |= MS_REMOUNT;
		else if (!strcmp(t, "bind"))
			f |= MS_BIND;
		else if (!strcmp(t, "rdonly"))
			f |= MS_RDONLY;
		else if (!strcmp(t, "rec"))
			f |= MS_REC;
		else if (strcmp(t, "none") != 0)
			return usage();
	}
	mkdir(target, 0755);
	const char *s = strcmp(src, "-") ? src : NULL;
	const char *fs = strcmp(fstype, "-") ? fstype : NULL;
	return report("mount", mount(s, target, fs, f, data));
}

/* Read everything: the refusal of a masked file is an error or zero bytes. */
static int read_all(const char *path)
{
	int fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return report("read", -1);
	char buf[65536];
	long total = 0, n;
	while ((n = read(fd, buf, sizeof buf)) > 0 && total < (64L << 20))
		total += n;
	int saved = errno;
	close(fd);
	if (n < 0) {
		errno = saved;
		return report("read", -1);
	}
	printf("read bytes=%ld\n", total);
	fflush(stdout);
	return 0;
}

static int do_mknod(const char *name, const char *path, mode_t kind, const char *maj, const char *min)
{
	dev_t dev = makedev(strtoul(maj, NULL, 10), strtoul(min, NULL, 10));
	long rc = mknod(path, kind | 0600, dev);
	return report(name, rc);
}

static int do_ptrace(pid_t pid)
{
	long rc = ptrace(PTRACE_ATTACH, pid, NULL, NULL);
	int saved = errno;
	if (rc == 0) {
		waitpid(pid, NULL, __WALL);
		ptrace(PTRACE_DETACH, pid, NULL, NULL);
	}
	errno = saved;
	return report("ptrace", rc);
}

static int do_pidfd(pid_t pid)
{
	long fd = syscall(SYS_pidfd_open, pid, 0);
	if (fd >= 0)
		close((int)fd);
	return report("pidfd", fd);
}

/* pidfd_getfd of the target's first descriptors: ok means another process's file was taken. */
static int do_getfd(pid_t pid)
{
	long fd = syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return report("getfd", fd);
	long rc = -1;
	for (int target = 0; target < 16 && rc < 0; target++)
		rc = syscall(SYS_pidfd_getfd, (int)fd, target, 0);
	int saved = errno;
	if (rc >= 0)
		close((int)rc);
	close((int)fd);
	errno = saved;
	return report("getfd", rc);
}

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

/* A Unix socket server that turns its first client's credentials against it: the pid it sees
 * (SO_PEERCRED), then the client's pidfd (SO_PEERPIDFD) for pidfd_getfd and SIGSTOP. */
static int peer_pidfd(const char *path)
{
	struct sockaddr_un sa;
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	unlink(path);
	if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(s, 1) != 0)
		return report("listen", -1);
	int c = accept(s, NULL, NULL);
	if (c < 0)
		return report("accept", -1);
	struct ucred cred;
	socklen_t len = sizeof cred;
	if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
		printf("peer-cred pid=%d\n", (int)cred.pid);
	int pidfd = -1;
	len = sizeof pidfd;
	if (getsockopt(c, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) {
		report("peer-pidfd", -1);
		return 0;
	}
	long rc = -1;
	for (int target = 0; target < 16 && rc < 0; target++)
		rc = syscall(SYS_pidfd_getfd, pidfd, target, 0);
	report("peer-getfd", rc);
	report("peer-sigstop", syscall(SYS_pidfd_send_signal, pidfd, SIGSTOP, NULL, 0));
	return 0;
}

/* Makes inotify instances until the kernel refuses one, reports how many, then holds them
 * until killed: what a node can take of its user's per-user counter. */
static int inotify_fill(void)
{
	long n = 0;
	while (n < 1000000 && inotify_init1(IN_CLOEXEC) >= 0)
		n++;
	printf("inotify-fill count=%ld ", n);
	report("inotify", -1);
	for (;;)
		pause();
	return 0;
}

/* A non-blocking connect: an address without a route fails at once with ENETUNREACH. */
static int do_connect(const char *addr, const char *port)
{
	struct sockaddr_storage ss;
	socklen_t len;
	memset(&ss, 0, sizeof ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((unsigned short)atoi(port));
		len = sizeof *v4;
	} else if (inet_pton(AF_INET6, addr, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((unsigned short)atoi(port));
		len = sizeof *v6;
	} else {
		return usage();
	}
	int s = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s < 0)
		return report("connect", -1);
	long rc = connect(s, (struct sockaddr *)&ss, len);
	int saved = errno;
	close(s);
	errno = saved;
	/* EINPROGRESS means a route existed and a SYN left: that is the escape. */
	return report("connect", rc);
}

static int do_settimeofday(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return report("settimeofday", settimeofday(&tv, NULL));
}

static int do_clock_settime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return report("clock_settime", clock_settime(CLOCK_REALTIME, &ts));
}

/* Adjust by zero: changes nothing where allowed, EPERM without CAP_SYS_TIME. */
static int do_clock_adjtime(void)
{
	struct timex tx;
	memset(&tx, 0, sizeof tx);
	tx.modes = ADJ_SETOFFSET | ADJ_NANO;
	long rc = syscall(SYS_clock_adjtime, CLOCK_REALTIME, &tx);
	return report("clock_adjtime", rc < 0 ? -1 : 0);
}

/* kill(pid, 0) of every pid up to pid_max: lists the pids this process can name at all. */
static int scan_pids(void)
{
	long max = 4194304;
	FILE *f = fopen("/proc/sys/kernel/pid_max", "r");
	if (f) {
		if (fscanf(f, "%ld", &max) != 1)
			max = 4194304;
		fclose(f);
	}
	printf("scan-pids visible=");
	const char *sep = "";
	for (long pid = 1; pid <= max; pid++) {
		if (kill((pid_t)pid, 0) == 0 || errno == EPERM) {
			printf("%s%ld", sep, pid);
			sep = ",";
		}
	}
	printf("\n");
	fflush(stdout);
	return 0;
}

/* The classic chroot break-out: chroot into a subdirectory, climb out, chroot("."). */
static int chroot_escape(const char *host_path)
{
	mkdir("/tmp/escape-chroot", 0700);
	if (chroot("/tmp/escape-chroot") != 0)
		return report("chroot", -1);
	for (int i = 0; i < 64; i++)
		if (chdir("..") != 0)
			break;
	if (chroot(".") != 0)
		return report("chroot", -1);
	struct stat st;
	/* ok means the host-only path is visible: the node's root was escaped. */
	return report("chroot-escape", stat(host_path, &st));
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	const char *a = argv[1];
	if (!strcmp(a, "open-w") && argc == 3)
		return open_w(argv[2]);
	if (!strcmp(a, "read") && argc == 3)
		return read_all(argv[2]);
	if (!strcmp(a, "mknod-blk") && argc == 5)
		return do_mknod("mknod-blk", argv[2], S_IFBLK, argv[3], argv[4]);
	if (!strcmp(a, "mknod-chr") && argc == 5)
		return do_mknod("mknod-chr", argv[2], S_IFCHR, argv[3], argv[4]);
	if (!strcmp(a, "ptrace") && argc == 3)
		return do_ptrace(atoi(argv[2]));
	if (!strcmp(a, "kill0") && argc == 3)
		return report("kill0", kill(atoi(argv[2]), 0));
	if (!strcmp(a, "inotify-fill"))
		return inotify_fill();
	if (!strcmp(a, "getfd") && argc == 3)
		return do_getfd((pid_t)atoi(argv[2]));
	if (!strcmp(a, "peer-pidfd") && argc == 3)
		return peer_pidfd(argv[2]);
	if (!strcmp(a, "pidfd") && argc == 3)
		return do_pidfd(atoi(argv[2]));
	if (!strcmp(a, "connect") && argc == 4)
		return do_connect(argv[2], argv[3]);
	if (!strcmp(a, "sethostname") && argc == 3)
		return report("sethostname", sethostname(argv[2], strlen(argv[2])));
	if (!strcmp(a, "settimeofday"))
		return do_settimeofday();
	if (!strcmp(a, "clock_settime"))
		return do_clock_settime();
	if (!strcmp(a, "clock_adjtime"))
		return do_clock_adjtime();
	if (!strcmp(a, "iopl"))
		return report("iopl", iopl(3));
	if (!strcmp(a, "ioperm"))
		return report("ioperm", ioperm(0x80, 1, 1));
	if (!strcmp(a, "scan-pids"))
		return scan_pids();
	if (!strcmp(a, "chroot-escape") && argc == 3)
		return chroot_escape(argv[2]);
	if (!strcmp(a, "create") && argc == 3)
		return create(argv[2]);
	if (!strcmp(a, "mount") && (argc == 6 || argc == 7))
		return do_mount(argv[2], argv[3], argv[4], argv[5], argc == 7 ? argv[6] : NULL);
	if (!strcmp(a, "umount") && argc == 3)
		return report("umount", umount2(argv[2], 0));
	if (!strcmp(a, "reboot")) {
		sync();
		return report("reboot", reboot(RB_AUTOBOOT));
	}
	return usage();
}
