/*
 * A netmap application as its authors write one, against <net/netmap.h>
 * and <net/netmap_user.h>: no vale code. Run with
 * LD_PRELOAD=libvale_netmap.so VALE_SOCKET=... against valed.
 *
 *   nmapp layout              sizes and offsets of the ABI structures
 *   nmapp tx PORT N           sends N 60-byte frames (NIOCCTRL register,
 *                             poll for room, NIOCTXSYNC at the end)
 *   nmapp rx PORT N           receives N frames (legacy NIOCREGIF, as
 *                             nm_open does; poll for frames)
 *   nmapp errors PORT         the error codes of bad requests
 *   nmapp fork PORT N         registers, forks; the child sends N frames
 *   nmapp rxselect PORT N     as rx, on a dup of the descriptor (the
 *                             original closed), waiting with select
 *   nmapp txppoll PORT N      as tx, waiting with ppoll
 *   nmapp sigmask PORT        ppoll and pselect on an idle port, SIGUSR1
 *                             pending and unblocked by their mask only:
 *                             each wait ends at once with EINTR
 *   nmapp rxepoll PORT N      as rx, waiting with epoll_wait (a pipe in
 *                             the same epoll instance, written once, is
 *                             reported too)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <net/netmap.h>
#include <net/netmap_user.h>

#define P(what, v) printf("%s %ld\n", what, (long)(v))

static int layout(void)
{
	P("sizeof.netmap_slot", sizeof(struct netmap_slot));
	P("sizeof.netmap_ring", sizeof(struct netmap_ring));
	P("offsetof.netmap_ring.head", offsetof(struct netmap_ring, head));
	P("offsetof.netmap_ring.tail", offsetof(struct netmap_ring, tail));
	P("offsetof.netmap_ring.ts", offsetof(struct netmap_ring, ts));
	P("offsetof.netmap_ring.sem", offsetof(struct netmap_ring, sem));
	P("offsetof.netmap_ring.slot", offsetof(struct netmap_ring, slot));
	P("sizeof.netmap_if", sizeof(struct netmap_if));
	P("offsetof.netmap_if.ring_ofs", offsetof(struct netmap_if, ring_ofs));
	P("sizeof.nmreq_header", sizeof(struct nmreq_header));
	P("offsetof.nmreq_header.nr_body", offsetof(struct nmreq_header, nr_body));
	P("sizeof.nmreq_register", sizeof(struct nmreq_register));
	P("offsetof.nmreq_register.nr_flags", offsetof(struct nmreq_register, nr_flags));
	P("sizeof.nmreq_option", sizeof(struct nmreq_option));
	P("sizeof.nmreq", sizeof(struct nmreq));
	P("sizeof.nmreq_port_info_get", sizeof(struct nmreq_port_info_get));
	P("NIOCCTRL", NIOCCTRL);
	P("NIOCREGIF", NIOCREGIF);
	P("NIOCGINFO", NIOCGINFO);
	P("NIOCTXSYNC", NIOCTXSYNC);
	P("NIOCRXSYNC", NIOCRXSYNC);
	P("NETMAP_REQ_PORT_HDR_GET", NETMAP_REQ_PORT_HDR_GET);
	P("NETMAP_REQ_CSB_ENABLE", NETMAP_REQ_CSB_ENABLE);
	return 0;
}

struct port {
	int fd;
	void *mem;
	size_t memsize;
	struct netmap_if *nifp;
};

/* Registers PORT through NIOCCTRL. */
static int reg_ctrl(struct port *p, const char *name)
{
	struct nmreq_header h;
	struct nmreq_register r;

	p->fd = open("/dev/netmap", O_RDWR);
	if (p->fd < 0)
		return -1;
	memset(&h, 0, sizeof(h));
	memset(&r, 0, sizeof(r));
	h.nr_version = NETMAP_API;
	h.nr_reqtype = NETMAP_REQ_REGISTER;
	strncpy(h.nr_name, name, sizeof(h.nr_name) - 1);
	h.nr_body = (uintptr_t)&r;
	r.nr_mode = NR_REG_ALL_NIC;
	if (ioctl(p->fd, NIOCCTRL, &h) < 0)
		return -1;
	p->memsize = r.nr_memsize;
	p->mem = mmap(NULL, p->memsize, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
	if (p->mem == MAP_FAILED)
		return -1;
	p->nifp = NETMAP_IF(p->mem, r.nr_offset);
	return 0;
}

/* Registers PORT through the legacy NIOCREGIF, as nm_open() does. */
static int reg_legacy(struct port *p, const char *name)
{
	struct nmreq req;

	p->fd = open("/dev/netmap", O_RDWR);
	if (p->fd < 0)
		return -1;
	memset(&req, 0, sizeof(req));
	req.nr_version = NETMAP_API;
	strncpy(req.nr_name, name, sizeof(req.nr_name) - 1);
	req.nr_flags = NR_REG_ALL_NIC;
	if (ioctl(p->fd, NIOCREGIF, &req) < 0)
		return -1;
	p->memsize = req.nr_memsize;
	p->mem = mmap(0, p->memsize, PROT_WRITE | PROT_READ, MAP_SHARED, p->fd, 0);
	if (p->mem == MAP_FAILED)
		return -1;
	p->nifp = NETMAP_IF(p->mem, req.nr_offset);
	return 0;
}

static void frame(char *buf, uint32_t seq)
{
	memset(buf, 0, 60);
	memset(buf, 0xff, 6);                          /* broadcast */
	memcpy(buf + 6, "\x02\x00\x00\x00\x00\x0c", 6); /* source */
	buf[12] = 0x88;
	buf[13] = 0xb5; /* local experimental EtherType */
	memcpy(buf + 14, &seq, 4);
}

static int use_ppoll;

static int wait_out(struct pollfd *pfd)
{
	struct timespec ts = { .tv_sec = 5 };
	if (use_ppoll)
		return ppoll(pfd, 1, &ts, NULL);
	return poll(pfd, 1, 5000);
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int tx(struct port *p, long n)
{
	struct netmap_ring *ring = NETMAP_TXRING(p->nifp, 0);
	struct pollfd pfd = { .fd = p->fd, .events = POLLOUT };
	long sent = 0;
	uint32_t i;
	double t0;

	/* Frames are written once into every buffer, as netmap's pkt-gen
	 * does: the loop only hands slots over. */
	for (i = 0; i < ring->num_slots; i++)
		frame(NETMAP_BUF(ring, ring->slot[i].buf_idx), i);
	t0 = now();
	while (sent < n) {
		if (wait_out(&pfd) <= 0 || !(pfd.revents & POLLOUT)) {
			fprintf(stderr, "tx: poll gave no room (%ld sent)\n", sent);
			return 1;
		}
		while (!nm_ring_empty(ring) && sent < n) {
			i = ring->cur;
			ring->slot[i].len = 60;
			ring->head = ring->cur = nm_ring_next(ring, i);
			sent++;
		}
	}
	if (ioctl(p->fd, NIOCTXSYNC, NULL) < 0) {
		perror("NIOCTXSYNC");
		return 1;
	}
	printf("sent %ld in %.3f s: %.3f Mpps\n", sent, now() - t0, sent / (now() - t0) / 1e6);
	return 0;
}

static int use_select;
static int epfd = -1, pipe_seen;
static int pipefd[2];

static int wait_in(struct pollfd *pfd)
{
	while (epfd >= 0) {
		struct epoll_event ev[4];
		int i, k = epoll_wait(epfd, ev, 4, 10000);

		pfd->revents = 0;
		if (k <= 0)
			return k;
		for (i = 0; i < k; i++) {
			if (ev[i].data.u64 == 1 && (ev[i].events & EPOLLIN))
				pfd->revents = POLLIN;
			if (ev[i].data.u64 == 2) {
				char c;

				if (read(pipefd[0], &c, 1) == 1)
					pipe_seen++;
			}
		}
		/* Only the pipe: wait again for frames. */
		if (pfd->revents)
			return k;
	}
	if (use_select) {
		fd_set r;
		struct timeval tv = { .tv_sec = 10 };
		int rc;

		FD_ZERO(&r);
		FD_SET(pfd->fd, &r);
		rc = select(pfd->fd + 1, &r, NULL, NULL, &tv);
		pfd->revents = (rc > 0 && FD_ISSET(pfd->fd, &r)) ? POLLIN : 0;
		return rc;
	}
	return poll(pfd, 1, 10000);
}

static int rx(struct port *p, long n)
{
	struct netmap_ring *ring = NETMAP_RXRING(p->nifp, 0);
	struct pollfd pfd = { .fd = p->fd, .events = POLLIN };
	long got = 0, bad = 0;

	while (got < n) {
		if (wait_in(&pfd) <= 0 || !(pfd.revents & POLLIN)) {
			fprintf(stderr, "rx: nothing for 10 s (%ld received)\n", got);
			break;
		}
		while (!nm_ring_empty(ring)) {
			uint32_t i = ring->cur;
			struct netmap_slot *s = &ring->slot[i];
			if (s->len < 60)
				bad++;
			got++;
			ring->head = ring->cur = nm_ring_next(ring, i);
		}
	}
	printf("received %ld bad %ld\n", got, bad);
	return got == n && bad == 0 ? 0 : 1;
}

#define CHECK(what, cond) do { \
	printf("%s %s\n", (cond) ? "ok" : "FAIL", what); \
	fails += !(cond); \
} while (0)

static int errors(const char *name)
{
	struct nmreq_header h;
	struct nmreq_register r;
	struct nmreq info;
	struct port p;
	int fails = 0, fd, rc;

	fd = open("/dev/netmap", O_RDWR);
	memset(&h, 0, sizeof(h));
	memset(&r, 0, sizeof(r));
	h.nr_version = 13;
	h.nr_reqtype = NETMAP_REQ_REGISTER;
	strncpy(h.nr_name, name, sizeof(h.nr_name) - 1);
	h.nr_body = (uintptr_t)&r;
	rc = ioctl(fd, NIOCCTRL, &h);
	CHECK("version 13 refused with EINVAL", rc < 0 && errno == EINVAL);
	h.nr_version = NETMAP_API;
	strcpy(h.nr_name, "vale0:bad name");
	rc = ioctl(fd, NIOCCTRL, &h);
	CHECK("a bad name refused with EINVAL", rc < 0 && errno == EINVAL);
	rc = ioctl(fd, NIOCTXSYNC, NULL);
	CHECK("NIOCTXSYNC before REGISTER refused with ENXIO", rc < 0 && errno == ENXIO);
	strncpy(h.nr_name, name, sizeof(h.nr_name) - 1);
	r.nr_flags = NR_MONITOR_RX;
	rc = ioctl(fd, NIOCCTRL, &h);
	CHECK("a monitor of a port not in netmap mode refused with EINVAL", rc < 0 && errno == EINVAL);
	r.nr_flags = NR_ZCOPY_MON | NR_MONITOR_TX;
	rc = ioctl(fd, NIOCCTRL, &h);
	CHECK("a zero-copy monitor of a port not in netmap mode refused with EINVAL", rc < 0 && errno == EINVAL);
	r.nr_flags = 0;
	close(fd);

	if (reg_ctrl(&p, name) < 0) {
		perror("register");
		return 1;
	}
	CHECK("REGISTER answers nr_memsize", p.memsize > 0);
	CHECK("the netmap_if has the port's rings", p.nifp->ni_tx_rings >= 1 && p.nifp->ni_rx_rings >= 1);
	memset(&h, 0, sizeof(h));
	memset(&r, 0, sizeof(r));
	h.nr_version = NETMAP_API;
	h.nr_reqtype = NETMAP_REQ_REGISTER;
	strncpy(h.nr_name, name, sizeof(h.nr_name) - 1);
	h.nr_body = (uintptr_t)&r;
	rc = ioctl(p.fd, NIOCCTRL, &h);
	CHECK("a second REGISTER on the file refused with EBUSY", rc < 0 && errno == EBUSY);
	CHECK("mmap past the region refused", mmap(NULL, p.memsize + 4096, PROT_READ, MAP_SHARED, p.fd, 0) == MAP_FAILED && errno == EINVAL);
	{
		/* Another port's memory (nr_mem_id): an id that names no
		 * region is EINVAL, even for a port that exists; a port's own
		 * region has no room for a second port (ENOMEM). */
		struct port q3;
		struct nmreq_port_info_get pi;
		struct nmreq_header ph;
		char third[32];
		int f2 = open("/dev/netmap", O_RDWR);

		memset(&r, 0, sizeof(r));
		r.nr_mem_id = 999;
		rc = ioctl(f2, NIOCCTRL, &h);
		CHECK("a memory id that names no region refused with EINVAL", rc < 0 && errno == EINVAL);
		snprintf(third, sizeof(third), "%s3", name);
		if (reg_ctrl(&q3, third) < 0) {
			perror("register");
			return 1;
		}
		memset(&ph, 0, sizeof(ph));
		memset(&pi, 0, sizeof(pi));
		ph.nr_version = NETMAP_API;
		ph.nr_reqtype = NETMAP_REQ_PORT_INFO_GET;
		snprintf(ph.nr_name, sizeof(ph.nr_name), "%s", third);
		ph.nr_body = (uintptr_t)&pi;
		rc = ioctl(f2, NIOCCTRL, &ph);
		CHECK("PORT_INFO_GET gives the port's memory id", rc == 0 && pi.nr_mem_id >= 2);
		snprintf(h.nr_name, sizeof(h.nr_name), "%s4", name);
		r.nr_mem_id = pi.nr_mem_id;
		rc = ioctl(f2, NIOCCTRL, &h);
		CHECK("a port in another port's own region refused with ENOMEM", rc < 0 && errno == ENOMEM);
		memset(h.nr_name, 0, sizeof(h.nr_name));
		strncpy(h.nr_name, name, sizeof(h.nr_name) - 1);
		memset(&r, 0, sizeof(r));
		close(f2);
	}
	memset(&info, 0, sizeof(info));
	info.nr_version = NETMAP_API;
	strncpy(info.nr_name, name, sizeof(info.nr_name) - 1);
	rc = ioctl(p.fd, NIOCGINFO, &info);
	CHECK("NIOCGINFO gives the region size", rc == 0 && info.nr_memsize == p.memsize);
	rc = ioctl(p.fd, 0x1234, NULL);
	CHECK("an unknown ioctl gives ENOTTY", rc < 0 && errno == ENOTTY);
	{
		struct port q;
		char other[64];
		int d;

		/* dup2 onto another registered file closes that registration
		 * and makes the descriptor this one's. */
		snprintf(other, sizeof(other), "%s2", name);
		if (reg_ctrl(&q, other) < 0) {
			perror("register");
			return 1;
		}
		rc = dup2(p.fd, q.fd);
		CHECK("dup2 onto another netmap file", rc == q.fd && ioctl(q.fd, NIOCTXSYNC, NULL) == 0);
		d = fcntl(p.fd, F_DUPFD_CLOEXEC, 0);
		CHECK("F_DUPFD gives the same netmap file", d >= 0 && ioctl(d, NIOCRXSYNC, NULL) == 0);
		close(p.fd);
		CHECK("the file lives on in its other descriptors", ioctl(d, NIOCTXSYNC, NULL) == 0 && ioctl(q.fd, NIOCTXSYNC, NULL) == 0);
		close(d);
		close(q.fd);
	}
	return fails ? 1 : 0;
}

static int forked(const char *name, long n)
{
	struct port p;
	pid_t pid;
	int st;

	if (reg_ctrl(&p, name) < 0) {
		perror("register");
		return 1;
	}
	pid = fork();
	if (pid == 0)
		_exit(tx(&p, n));
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st)) {
		fprintf(stderr, "child died\n");
		return 1;
	}
	return WEXITSTATUS(st);
}

static volatile sig_atomic_t handled;

static void on_usr1(int sig)
{
	(void)sig;
	handled++;
}

/* The race ppoll and pselect exist to close: a signal blocked by the
 * program, pending, and unblocked only by the wait's mask must end the
 * wait at once (EINTR), not run its handler before a wait that then
 * sleeps its full timeout. */
static int sigmask_waits(const char *name)
{
	struct port p;
	struct pollfd pfd;
	struct timespec ts = { .tv_sec = 3 };
	sigset_t block, none;
	fd_set r;
	double t0;
	int rc, err, fails = 0;

	if (reg_legacy(&p, name) < 0) {
		perror("register");
		return 1;
	}
	signal(SIGUSR1, on_usr1);
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigemptyset(&none);
	sigprocmask(SIG_BLOCK, &block, NULL);

	raise(SIGUSR1);
	pfd.fd = p.fd;
	pfd.events = POLLIN;
	t0 = now();
	rc = ppoll(&pfd, 1, &ts, &none);
	err = errno;
	printf("ppoll rc=%d eintr=%d handled=%d in %.2f s\n", rc, err == EINTR, (int)handled, now() - t0);
	fails += !(rc < 0 && err == EINTR && handled == 1 && now() - t0 < 1.5);

	raise(SIGUSR1);
	FD_ZERO(&r);
	FD_SET(p.fd, &r);
	t0 = now();
	rc = pselect(p.fd + 1, &r, NULL, NULL, &ts, &none);
	err = errno;
	printf("pselect rc=%d eintr=%d handled=%d in %.2f s\n", rc, err == EINTR, (int)handled, now() - t0);
	fails += !(rc < 0 && err == EINTR && handled == 2 && now() - t0 < 1.5);
	return fails != 0;
}

int main(int argc, char **argv)
{
	struct port p;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "layout"))
		return layout();
	if (argc >= 3 && !strcmp(argv[1], "errors"))
		return errors(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "sigmask"))
		return sigmask_waits(argv[2]);
	if (argc < 4)
		return 2;
	if (!strcmp(argv[1], "fork"))
		return forked(argv[2], atol(argv[3]));
	if (!strcmp(argv[1], "txppoll")) {
		use_ppoll = 1;
		argv[1] = "tx";
	}
	if (!strcmp(argv[1], "rxepoll")) {
		struct epoll_event ev = { .events = EPOLLIN };
		int rc;

		if (reg_legacy(&p, argv[2]) < 0) {
			perror("register");
			return 1;
		}
		epfd = epoll_create1(0);
		if (pipe(pipefd) < 0 || write(pipefd[1], "x", 1) != 1)
			return 1;
		ev.data.u64 = 1;
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, p.fd, &ev) < 0)
			return 1;
		ev.data.u64 = 2;
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, pipefd[0], &ev) < 0)
			return 1;
		rc = rx(&p, atol(argv[3]));
		printf("pipe seen %d\n", pipe_seen);
		return rc || pipe_seen != 1;
	}
	if (!strcmp(argv[1], "rxselect")) {
		int d;

		use_select = 1;
		if (reg_legacy(&p, argv[2]) < 0) {
			perror("register");
			return 1;
		}
		/* The registration lives on in the duplicate. */
		d = dup(p.fd);
		close(p.fd);
		p.fd = d;
		return rx(&p, atol(argv[3]));
	}
	if (!strcmp(argv[1], "tx")) {
		if (reg_ctrl(&p, argv[2]) < 0) {
			perror("register");
			return 1;
		}
		return tx(&p, atol(argv[3]));
	}
	if (!strcmp(argv[1], "rx")) {
		if (reg_legacy(&p, argv[2]) < 0) {
			perror("register");
			return 1;
		}
		return rx(&p, atol(argv[3]));
	}
	return 2;
}
