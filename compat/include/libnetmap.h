/*
 * libnetmap for vale: open a netmap port by name and use its rings,
 * without writing the register request by hand. Written for vale (the
 * nmport_* calls of netmap's libnetmap); link with
 * `pkg-config --cflags --libs libnetmap` (libvale_netmap.so, which also
 * emulates /dev/netmap for the descriptors it opens).
 */
#ifndef LIBNETMAP_H_
#define LIBNETMAP_H_

#include <stddef.h>
#include <stdint.h>
#include <net/netmap.h>
#include <net/netmap_user.h>

/* An open port. The fields are those of netmap's struct nmport_d that
 * programs read; the library fills them. */
struct nmport_d {
	struct nmreq_header hdr;     /* the register request, name included */
	struct nmreq_register reg;   /* its body, valed's answer once open */
	int fd;                      /* the netmap file */
	struct netmap_if *nifp;      /* in the mapped region */
	void *mem;                   /* the mapped region */
	uint64_t memsize;
	uint16_t first_tx_ring;      /* the rings the port name bound */
	uint16_t last_tx_ring;
	uint16_t first_rx_ring;
	uint16_t last_rx_ring;
	uint16_t cur_tx_ring;        /* where nmport_inject looks first */
	uint16_t cur_rx_ring;
	int register_done;
	int mmap_done;
};

#ifdef __cplusplus
extern "C" {
#endif

/* Parses `portspec` (netmap's names: vale0:a, netmap:eth0-1,
 * vale0:a@conf:slots=256, ...) into a new descriptor, not yet open.
 * NULL with errno set on failure (EINVAL for a bad name). */
struct nmport_d *nmport_prepare(const char *portspec);
/* Registers and maps a prepared descriptor; 0, or -1 with errno. */
int nmport_open_desc(struct nmport_d *d);
/* Frees a prepared descriptor that was never opened. */
void nmport_undo_prepare(struct nmport_d *d);
/* nmport_prepare + nmport_open_desc. */
struct nmport_d *nmport_open(const char *portspec);
/* Unmaps, closes the netmap file (draining what was sent) and frees. */
void nmport_close(struct nmport_d *d);
/* Copies one frame into the next free slot of the bound TX rings,
 * starting at cur_tx_ring; returns `size`, or 0 if every ring is full or
 * the frame is larger than a buffer. No txsync: call ioctl(NIOCTXSYNC)
 * or poll. */
int nmport_inject(struct nmport_d *d, const void *buf, size_t size);

/* libnetmap's context. Accepted where libnetmap takes one, never read:
 * errors are reported through errno only. NULL is fine. */
struct nmctx;

/* nmreq_* helpers, with libnetmap's signatures. */
/* Zeroes *hdr, then sets nr_version (NETMAP_API), nr_reqtype, nr_body. */
void nmreq_header_init(struct nmreq_header *hdr, uint16_t reqtype, void *body);
/* The port name at *ppspec into hdr->nr_name (other fields unchanged);
 * *ppspec moves past it. 0, or -1 with errno EINVAL and nothing changed. */
int nmreq_header_decode(const char **ppspec, struct nmreq_header *hdr, struct nmctx *ctx);
/* The opening mode at *pmode (-N, ^, ^N, *, /flags, @N) into nr_mode,
 * nr_ringid, nr_flags and (if given) nr_mem_id; *pmode moves past it,
 * stopping at an '@' that starts options. 0, or -1 with errno EINVAL. */
int nmreq_register_decode(const char **pmode, struct nmreq_register *reg, struct nmctx *ctx);
/* The memory id of the port named at *portname (PORT_INFO_GET); *portname
 * moves past the name. The id, or -1 with errno (ENXIO: no such port). */
int32_t nmreq_get_mem_id(const char **portname, struct nmctx *ctx);
/* The option list of a request (hdr->nr_options). */
void nmreq_push_option(struct nmreq_header *hdr, struct nmreq_option *opt);
void nmreq_remove_option(struct nmreq_header *hdr, struct nmreq_option *opt);
struct nmreq_option *nmreq_find_option(struct nmreq_header *hdr, uint32_t reqtype);
/* Empties the list, free()ing each option (they must come from malloc). */
void nmreq_free_options(struct nmreq_header *hdr);
/* "extmem", "csb", ...: the name of option type reqtype, or "unknown". */
const char *nmreq_option_name(uint32_t reqtype);
#define nmreq_foreach_option(h_, o_) \
	for ((o_) = (struct nmreq_option *)(uintptr_t)((h_)->nr_options); \
	     (o_) != NULL; \
	     (o_) = (struct nmreq_option *)(uintptr_t)((o_)->nro_next))

#ifdef __cplusplus
}
#endif

#endif /* LIBNETMAP_H_ */
