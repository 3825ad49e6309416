/*
 * A program that links libnetmap (pkg-config libnetmap) instead of opening
 * /dev/netmap: nmport_open, nmport_inject, poll on d->fd, the rings
 * through d->nifp, nmport_close.
 *
 *   nmport size               sizeof(struct nmport_d)
 *   nmport tx PORTSPEC N      injects N 60-byte frames
 *   nmport rx PORTSPEC N      receives N frames from the bound rings
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <libnetmap.h>

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
