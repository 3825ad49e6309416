/*
 * netmap's user-space helpers (the macros and inline functions of
 * netmap_user.h that address rings and buffers), written for vale from
 * the ABI facts. Programs run against valed with LD_PRELOAD=libvale_netmap.so.
 */
#ifndef _NET_NETMAP_USER_H_
#define _NET_NETMAP_USER_H_

#include <stdint.h>
#include <net/netmap.h>

#define _NETMAP_OFFSET(type, ptr, offset) ((type)(void *)((char *)(ptr) + (offset)))

#define NETMAP_IF(_base, _ofs) _NETMAP_OFFSET(struct netmap_if *, _base, _ofs)

#define NETMAP_TXRING(nifp, index) \
	_NETMAP_OFFSET(struct netmap_ring *, nifp, (nifp)->ring_ofs[index])

#define NETMAP_RXRING(nifp, index) \
	_NETMAP_OFFSET(struct netmap_ring *, nifp, \
		(nifp)->ring_ofs[index + (nifp)->ni_tx_rings + (nifp)->ni_host_tx_rings])

#define NETMAP_BUF(ring, index) \
	((char *)(ring) + (ring)->buf_ofs + ((size_t)(index) * (ring)->nr_buf_size))

#define NETMAP_BUF_IDX(ring, buf) \
	((((char *)(buf) - ((char *)(ring) + (ring)->buf_ofs)) / (ring)->nr_buf_size))

static inline uint32_t
nm_ring_next(struct netmap_ring *r, uint32_t i)
{
	return (i + 1 == r->num_slots) ? 0 : i + 1;
}

/* Slots the user owns: free slots (TX), frames (RX). */
static inline uint32_t
nm_ring_space(struct netmap_ring *ring)
{
	int ret = ring->tail - ring->cur;
	if (ret < 0)
		ret += ring->num_slots;
	return ret;
}

static inline int
nm_ring_empty(struct netmap_ring *ring)
{
	return (ring->cur == ring->tail);
}

static inline int
nm_tx_pending(struct netmap_ring *r)
{
	return nm_ring_next(r, r->tail) != r->head;
}

#endif /* _NET_NETMAP_USER_H_ */
