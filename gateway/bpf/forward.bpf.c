// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
//
// hsmgate's kernel forwarding (docs/OPERATIONS.md, "Kernel forwarding").
//
// A granted session's two sockets are put into HSMGATE_PEERS under each
// other's socket cookie: the entry keyed by the client socket's cookie holds
// the HSM node's socket and the other way round. This stream verdict program
// runs for every chunk of bytes that arrives on either socket and redirects
// it to the egress of the peer, so the kernel forwards the session without
// waking the gateway.
//
// The kernel does not hold back a sender whose redirected bytes the peer
// has not sent yet: they wait in the peer's queue, unbounded. So each
// direction has a budget (HSMGATE_DIRECTIONS, keyed by the receiving
// socket's cookie): bytes redirected and not yet acknowledged by the peer's
// receiver may not exceed `limit`. A chunk beyond it is passed to the
// receiving socket instead (charged to its receive buffer, so TCP closes
// the window), the direction enters HSMGATE_STOPPED for good, and its
// cookie goes to HSMGATE_OVERFLOWS: the gateway then stops the other
// direction too, waits until the redirected bytes are sent and copies the
// session in user space from there. A chunk that arrives while its peer is
// not in the map (the two sockets enter one after the other) takes the
// same way. A chunk is never dropped.
//
// The license string must be GPL-compatible for the kernel to let the
// program read `struct tcp_sock`; this file alone is offered under
// GPL-2.0-only or MIT, the rest of hsmgate under Apache-2.0.

#include <linux/bpf.h>
#include <linux/types.h>

#define SEC(name) __attribute__((section(name), used))

struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

// Receiving socket's cookie -> the peer socket. The gateway sets
// max_entries from forwarding.kernel_max_sessions (two per session).
struct bpf_map_def SEC("maps") HSMGATE_PEERS = {
	.type = BPF_MAP_TYPE_SOCKHASH,
	.key_size = sizeof(__u64),
	.value_size = sizeof(__u32),
	.max_entries = 2,
};

// One direction of a session; the layout is `Direction` in
// gateway/src/session/forward/kernel/maps.rs.
struct direction {
	// The peer's bytes written before the sockets entered the map, as
	// counted by its bytes_acked (plus what was still queued then).
	__u64 base;
	// Bytes redirected and not yet acknowledged by the peer's receiver
	// may not exceed this.
	__u64 limit;
	// Bytes this program redirected. Only this program writes the
	// entry after the gateway made it, and only by atomic adds.
	__u64 redirected;
};

// Receiving socket's cookie -> its direction.
struct bpf_map_def SEC("maps") HSMGATE_DIRECTIONS = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(__u64),
	.value_size = sizeof(struct direction),
	.max_entries = 2,
};

// Receiving socket's cookie -> nonzero: the direction is no longer
// forwarded here; every chunk is passed to the receiving socket for the
// gateway to copy. Set by this program on overflow, or by the gateway.
struct bpf_map_def SEC("maps") HSMGATE_STOPPED = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(__u64),
	.value_size = sizeof(__u32),
	.max_entries = 2,
};

// Cookies of receiving sockets whose direction just overflowed.
struct bpf_map_def SEC("maps") HSMGATE_OVERFLOWS = {
	.type = BPF_MAP_TYPE_RINGBUF,
	.max_entries = 64 * 1024,
};

// The one field read from the peer; its offset is relocated against the
// running kernel's BTF when the program is loaded (CO-RE).
struct tcp_sock {
	__u64 bytes_acked;
} __attribute__((preserve_access_index));

static __u64 (*bpf_get_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
				   __u64 flags) = (void *)BPF_FUNC_map_update_elem;
static struct tcp_sock *(*bpf_skc_to_tcp_sock)(void *sk) = (void *)BPF_FUNC_skc_to_tcp_sock;
static long (*bpf_sk_release)(void *sk) = (void *)BPF_FUNC_sk_release;
static long (*bpf_sk_redirect_hash)(struct __sk_buff *skb, void *map, void *key,
				    __u64 flags) = (void *)BPF_FUNC_sk_redirect_hash;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, __u64 size,
				  __u64 flags) = (void *)BPF_FUNC_ringbuf_output;

// Leave the direction to the gateway: every chunk from here on, this one
// included, is passed to the receiving socket, and the gateway is told.
static int leave(__u64 *cookie)
{
	__u32 stopped = 1;

	bpf_map_update_elem(&HSMGATE_STOPPED, cookie, &stopped, BPF_ANY);
	bpf_ringbuf_output(&HSMGATE_OVERFLOWS, cookie, sizeof(*cookie), 0);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int hsmgate_forward(struct __sk_buff *skb)
{
	// A chunk without bytes (the peer's FIN): nothing to forward, and
	// sending it on would fail and break the peer's socket. The gateway
	// learns of the end of stream itself and passes it on.
	if (skb->len == 0)
		return SK_PASS;

	__u64 cookie = bpf_get_socket_cookie(skb);
	struct direction *dir = bpf_map_lookup_elem(&HSMGATE_DIRECTIONS, &cookie);

	// Not (or no longer) forwarded by the kernel: the gateway reads it.
	if (!dir || bpf_map_lookup_elem(&HSMGATE_STOPPED, &cookie))
		return SK_PASS;

	// The peer is not in the map (yet: a session's two sockets enter it
	// one after the other, and a chunk may come in between).
	struct bpf_sock *peer = bpf_map_lookup_elem(&HSMGATE_PEERS, &cookie);
	if (!peer)
		return leave(&cookie);
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(peer);
	__u64 acked = tp ? tp->bytes_acked : 0;
	bpf_sk_release(peer);
	if (!tp)
		return SK_PASS;

	if (dir->base + dir->redirected + skb->len > acked + dir->limit)
		return leave(&cookie);
	if (bpf_sk_redirect_hash(skb, &HSMGATE_PEERS, &cookie, 0) != SK_PASS)
		return leave(&cookie);
	__sync_fetch_and_add(&dir->redirected, skb->len);
	return SK_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";
