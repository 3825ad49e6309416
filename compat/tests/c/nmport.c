/*
 * A program that links libnetmap (pkg-config libnetmap) instead of opening
 * /dev/netmap: nmport_open, nmport_inject, poll on d->fd, the rings
 * through d->nifp, nmport_close.
 *
 *   nmport size               sizeof(struct nmport_d)
 *   nmport tx PORTSPEC N      injects N 60-byte frames
 *   nmport rx PORTSPEC N      receives N frames from the bound rings
 *   nmport nmreq PORT         the nmreq_* helpers, PORT a port in region 7
 *   nmport bridge A B N       forwards N frames from A to B as netmap's
 *                             bridge does: by swapping buffers when the
 *                             two ports share one memory (a->mem == b->mem,
 *                             e.g. vale0:a@5 and vale1:b@5), else by copy
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <libnetmap.h>

static int bridge(const char *an, const char *bn, long n)
{
	struct nmport_d *pa, *pb;
	struct pollfd pfd[2];
	long done = 0, swapped = 0;
	int zerocopy;

	pa = nmport_open(an);
	if (!pa) {
		perror(an);
		return 1;
	}
	pb = nmport_open(bn);
	if (!pb) {
		perror(bn);
		return 1;
	}
	zerocopy = pa->mem == pb->mem;
	printf("mem_id %u %u zerocopy %d\n", pa->reg.nr_mem_id, pb->reg.nr_mem_id, zerocopy);
	pfd[0].fd = pa->fd;
	pfd[0].events = POLLIN;
	pfd[1].fd = pb->fd;
	while (done < n) {
		struct netmap_ring *rx = NETMAP_RXRING(pa->nifp, pa->first_rx_ring);
		struct netmap_ring *tx = NETMAP_TXRING(pb->nifp, pb->first_tx_ring);
		unsigned int m;

		pfd[1].events = nm_ring_space(tx) ? 0 : POLLOUT;
		if (poll(pfd, 2, 10000) <= 0) {
			fprintf(stderr, "stalled at %ld\n", done);
			return 1;
		}
		m = nm_ring_space(rx);
		if (nm_ring_space(tx) < m)
			m = nm_ring_space(tx);
		for (; m > 0; m--) {
			struct netmap_slot *rs = &rx->slot[rx->cur];
			struct netmap_slot *ts = &tx->slot[tx->cur];

			if (zerocopy) {
				uint32_t b = ts->buf_idx;

				ts->buf_idx = rs->buf_idx;
				rs->buf_idx = b;
				ts->flags |= NS_BUF_CHANGED;
				rs->flags |= NS_BUF_CHANGED;
				swapped++;
			} else {
				memcpy(NETMAP_BUF(tx, ts->buf_idx), NETMAP_BUF(rx, rs->buf_idx), rs->len);
			}
			ts->len = rs->len;
			rx->head = rx->cur = nm_ring_next(rx, rx->cur);
			tx->head = tx->cur = nm_ring_next(tx, tx->cur);
			done++;
		}
		ioctl(pb->fd, NIOCTXSYNC, NULL);
	}
	nmport_close(pa);
	/* One mapping per region per process: b's survives a's close. */
	printf("after closing a: b's ring has %u slots\n",
	       NETMAP_TXRING(pb->nifp, pb->first_tx_ring)->num_slots);
	nmport_close(pb);
	printf("forwarded %ld swapped %ld\n", done, swapped);
	return 0;
}

#define CHECK(what, cond) do { \
	printf("%s %s\n", (cond) ? "ok" : "FAIL", what); \
	fails += !(cond); \
} while (0)

static int nmreq_helpers(const char *port)
{
	struct nmreq_header h;
	struct nmreq_register r;
	struct nmreq_option o1, o2, *o;
	const char *spec = "vale0:a-1/t@5@conf:rings=2";
	const char *p = spec;
	const char *bad = "vale0:";
	int fails = 0, n = 0, rc;

	memset(&r, 0, sizeof(r));
	nmreq_header_init(&h, NETMAP_REQ_REGISTER, &r);
	CHECK("header_init", h.nr_version == NETMAP_API && h.nr_reqtype == NETMAP_REQ_REGISTER &&
	      h.nr_body == (uintptr_t)&r && h.nr_options == 0 && h.nr_name[0] == 0);
	rc = nmreq_header_decode(&p, &h, NULL);
	CHECK("header_decode takes the name", rc == 0 && !strcmp(h.nr_name, "vale0:a") &&
	      !strcmp(p, "-1/t@5@conf:rings=2") && h.nr_body == (uintptr_t)&r);
	rc = nmreq_register_decode(&p, &r, NULL);
	CHECK("register_decode takes the mode", rc == 0 && r.nr_mode == NR_REG_ONE_NIC &&
	      r.nr_ringid == 1 && r.nr_flags == NR_MONITOR_TX && r.nr_mem_id == 5 &&
	      !strcmp(p, "@conf:rings=2"));
	p = "netmap:eth0*";
	rc = nmreq_header_decode(&p, &h, NULL);
	CHECK("a NIC's name has no prefix", rc == 0 && !strcmp(h.nr_name, "eth0") && !strcmp(p, "*"));
	rc = nmreq_register_decode(&p, &r, NULL);
	CHECK("* is NIC and host rings", rc == 0 && r.nr_mode == NR_REG_NIC_SW && *p == 0);
	p = bad;
	rc = nmreq_header_decode(&p, &h, NULL);
	CHECK("an empty port name is EINVAL, nothing moved", rc < 0 && errno == EINVAL && p == bad &&
	      !strcmp(h.nr_name, "eth0"));
	p = "-x";
	rc = nmreq_register_decode(&p, &r, NULL);
	CHECK("a bad mode is EINVAL", rc < 0 && errno == EINVAL);

	memset(&o1, 0, sizeof(o1));
	memset(&o2, 0, sizeof(o2));
	o1.nro_reqtype = NETMAP_REQ_OPT_EXTMEM;
	o2.nro_reqtype = NETMAP_REQ_OPT_OFFSETS;
	nmreq_push_option(&h, &o1);
	nmreq_push_option(&h, &o2);
	nmreq_foreach_option(&h, o)
		n++;
	CHECK("two options pushed", n == 2 && h.nr_options == (uintptr_t)&o2);
	CHECK("find_option", nmreq_find_option(&h, NETMAP_REQ_OPT_EXTMEM) == &o1 &&
	      nmreq_find_option(&h, NETMAP_REQ_OPT_CSB) == NULL);
	nmreq_remove_option(&h, &o1);
	CHECK("remove_option", h.nr_options == (uintptr_t)&o2 && o2.nro_next == 0 &&
	      nmreq_find_option(&h, NETMAP_REQ_OPT_EXTMEM) == NULL);
	nmreq_remove_option(&h, &o2);
	CHECK("the list is empty", h.nr_options == 0);
	o = malloc(sizeof(*o));
	memset(o, 0, sizeof(*o));
	nmreq_push_option(&h, o);
	nmreq_free_options(&h);
	CHECK("free_options", h.nr_options == 0);
	CHECK("option names", !strcmp(nmreq_option_name(NETMAP_REQ_OPT_EXTMEM), "extmem") &&
	      !strcmp(nmreq_option_name(NETMAP_REQ_OPT_CSB), "csb") &&
	      !strcmp(nmreq_option_name(999), "unknown"));

	p = port;
	rc = nmreq_get_mem_id(&p, NULL);
	CHECK("get_mem_id asks valed", rc == 7 && *p == 0);
	p = "vale0:nosuchport";
	rc = nmreq_get_mem_id(&p, NULL);
	CHECK("get_mem_id of no port is ENXIO", rc < 0 && errno == ENXIO);
	printf("nmreq fails %d\n", fails);
	return fails != 0;
}

int main(int argc, char **argv)
{
	struct nmport_d *d;
	struct pollfd pfd;
	long n, done = 0;
	char f[60];

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "size")) {
		printf("sizeof.nmport_d %zu\n", sizeof(struct nmport_d));
		printf("offsetof.nmport_d.fd %zu\n", offsetof(struct nmport_d, fd));
		printf("offsetof.nmport_d.first_tx_ring %zu\n", offsetof(struct nmport_d, first_tx_ring));
		printf("offsetof.nmport_d.mmap_done %zu\n", offsetof(struct nmport_d, mmap_done));
		d = nmport_open("vale0:no such port");
		printf("bad name: %s errno %d\n", d ? "opened" : "refused", errno);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "nmreq"))
		return nmreq_helpers(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "bridge"))
		return bridge(argv[2], argv[3], atol(argv[4]));
	if (argc < 4)
		return 2;
	n = atol(argv[3]);
	d = nmport_open(argv[2]);
	if (!d) {
		perror("nmport_open");
		return 1;
	}
	pfd.fd = d->fd;
	if (!strcmp(argv[1], "tx")) {
		memset(f, 0, sizeof(f));
		memset(f, 0xff, 6);
		f[12] = 0x88;
		f[13] = 0xb5;
		pfd.events = POLLOUT;
		while (done < n) {
			if (nmport_inject(d, f, sizeof(f)) == sizeof(f)) {
				done++;
				continue;
			}
			if (poll(&pfd, 1, 5000) <= 0) {
				fprintf(stderr, "no room (%ld sent)\n", done);
				return 1;
			}
		}
		ioctl(d->fd, NIOCTXSYNC, NULL);
		printf("injected %ld\n", done);
	} else {
		pfd.events = POLLIN;
		while (done < n) {
			int i;

			if (poll(&pfd, 1, 10000) <= 0) {
				fprintf(stderr, "nothing for 10 s (%ld received)\n", done);
				break;
			}
			for (i = d->first_rx_ring; i <= d->last_rx_ring; i++) {
				struct netmap_ring *r = NETMAP_RXRING(d->nifp, i);

				while (!nm_ring_empty(r)) {
					done++;
					r->head = r->cur = nm_ring_next(r, r->cur);
				}
			}
		}
		printf("received %ld\n", done);
	}
	nmport_close(d);
	return done == n ? 0 : 1;
}
