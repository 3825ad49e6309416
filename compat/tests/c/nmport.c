/*
 * A program that links libnetmap (pkg-config libnetmap) instead of opening
 * /dev/netmap: nmport_open, nmport_inject, poll on d->fd, the rings
 * through d->nifp, nmport_close.
 *
 *   nmport size               sizeof(struct nmport_d)
 *   nmport tx PORTSPEC N      injects N 60-byte frames
 *   nmport rx PORTSPEC N      receives N frames from the bound rings
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
