/*
 * The floor of a FUSE server's CPU for sequential 1 MiB reads: a libfuse3 low-level,
 * read-only filesystem with one file, `data`, answered from memory or spliced from a
 * file on disk. A bench tool (bench/fuse_floor.py builds and runs it), not part of
 * fluidfed.
 *
 *     fuse_floor [-s] [--splice FILE | --mmap FILE] SIZE_MIB MOUNTPOINT
 *
 *     -s             one thread (fuse_session_loop); default: fuse_session_loop_mt
 *     --mmap FILE    READ replies come from a shared read-only mapping of FILE, replied
 *                    with fuse_reply_buf (writev to /dev/fuse: the kernel pins the
 *                    mapping's page-cache pages and copies them), as fluidfed's native
 *                    session answers from a worker's block file in the page cache
 *     --splice FILE  READ replies come from FILE (fuse_reply_data, an fd buffer:
 *                    libfuse splices FILE -> pipe -> /dev/fuse, if a pipe can hold a
 *                    whole reply: says at start whether it can); default: `data` is
 *                    SIZE_MIB MiB generated in memory at start, replied with
 *                    fuse_reply_buf (one copy, writev to /dev/fuse)
 *
 * Mounted with max_read=1 MiB and max_readahead 1 MiB; the caller raises the mount's
 * read_ahead_kb to 1024 after it answers, so the kernel sends 1 MiB READs. Runs in the
 * foreground until unmounted (fusermount3 -u) or signalled; then says how many READs it
 * answered and their mean size.
 *
 *     cc -O2 -o fuse_floor fuse_floor.c $(pkg-config --cflags --libs fuse3)
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIB (1024 * 1024)
#define DATA_INO 2

static const char NAME[] = "data";
static char *mem;     /* memory and mmap modes: the file's contents */
static int mapped;    /* mmap mode: `mem` maps FILE */
static int splice_fd = -1; /* splice mode: the file replies come from */
static off_t size;
static unsigned long reads, read_bytes; /* READs answered, printed at exit */

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = size;
	}
}

static void floor_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_read = MIB; /* as the max_read mount option says (libfuse wants both) */
	conn->max_readahead = MIB;
	if (splice_fd >= 0 && (conn->capable & FUSE_CAP_SPLICE_WRITE))
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	else
		conn->want &= ~(unsigned)FUSE_CAP_SPLICE_WRITE;
}

static void floor_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = DATA_INO;
	e.attr_timeout = 3600;
	e.entry_timeout = 3600;
	fill_attr(DATA_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void floor_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != DATA_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 3600);
}

static void floor_readdir(fuse_req_t req, fuse_ino_t ino, size_t n, off_t off,
			  struct fuse_file_info *fi)
{
	char buf[256];
	struct stat st = { 0 };
	size_t used = 0;
	static const char *names[] = { ".", "..", NAME };
	static const fuse_ino_t inos[] = { FUSE_ROOT_ID, FUSE_ROOT_ID, DATA_INO };

	(void)fi;
	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	for (off_t i = off; i < 3; i++) {
		st.st_ino = inos[i];
		st.st_mode = i < 2 ? S_IFDIR : S_IFREG;
		size_t len = fuse_add_direntry(req, buf + used, sizeof(buf) - used, names[i],
					       &st, i + 1);
		if (used + len > sizeof(buf) || used + len > n)
			break;
		used += len;
	}
	fuse_reply_buf(req, buf, used);
}

static void floor_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != DATA_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EACCES);
		return;
	}
	fuse_reply_open(req, fi);
}

static void floor_read(fuse_req_t req, fuse_ino_t ino, size_t n, off_t off,
		       struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	if (off >= size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if ((off_t)n > size - off)
		n = size - off;
	__atomic_add_fetch(&reads, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&read_bytes, n, __ATOMIC_RELAXED);
	if (splice_fd < 0) {
		fuse_reply_buf(req, mem + off, n);
		return;
	}
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(n);
	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv.buf[0].fd = splice_fd;
	bv.buf[0].pos = off;
	fuse_reply_data(req, &bv, 0);
}

static const struct fuse_lowlevel_ops ops = {
	.init = floor_init,
	.lookup = floor_lookup,
	.getattr = floor_getattr,
	.readdir = floor_readdir,
	.open = floor_open,
	.read = floor_read,
};

/*
 * Whether libfuse can splice a 1 MiB reply: it grows its pipe to the reply plus 3 pages
 * (fuse_send_data_iov) and falls back to read() into a malloc'd buffer + writev() if
 * that fails: above /proc/sys/fs/pipe-max-size (1 MiB by default) without
 * CAP_SYS_RESOURCE.
 */
static int reply_fits_pipe(void)
{
	int p[2], ok;

	if (pipe(p) != 0)
		return 0;
	ok = fcntl(p[0], F_SETPIPE_SZ,
		   3 * getpagesize() + 16 /* fuse_out_header */ + MIB) >= 0;
	close(p[0]);
	close(p[1]);
	return ok;
}

/* FILE opened for reading, if it holds at least the file's `size` bytes; else -1, said */
static int open_source(const char *path, long mib)
{
	struct stat st;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0) {
		perror(path);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (st.st_size < size) {
		fprintf(stderr, "%s: smaller than %ld MiB\n", path, mib);
		close(fd);
		return -1;
	}
	return fd;
}

static int usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [-s] [--splice FILE | --mmap FILE] SIZE_MIB MOUNTPOINT\n", argv0);
	return 2;
}

int main(int argc, char **argv)
{
	int single = 0, ret = 1;
	const char *splice_path = NULL, *mmap_path = NULL, *mountpoint = NULL;
	long mib = -1;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-s") == 0)
			single = 1;
		else if (strcmp(argv[i], "--splice") == 0 && i + 1 < argc)
			splice_path = argv[++i];
		else if (strcmp(argv[i], "--mmap") == 0 && i + 1 < argc)
			mmap_path = argv[++i];
		else if (mib < 0)
			mib = strtol(argv[i], NULL, 10);
		else if (!mountpoint)
			mountpoint = argv[i];
		else
			return usage(argv[0]);
	}
	if (mib <= 0 || !mountpoint)
		return usage(argv[0]);
	size = (off_t)mib * MIB;

	if (splice_path) {
		splice_fd = open_source(splice_path, mib);
		if (splice_fd < 0)
			return 1;
		if (reply_fits_pipe())
			fprintf(stderr, "fuse_floor: a 1 MiB reply fits a pipe: spliced\n");
		else
			fprintf(stderr, "fuse_floor: a 1 MiB reply does not fit a pipe "
					"(pipe-max-size): libfuse falls back to read + writev\n");
	} else if (mmap_path) {
		int fd = open_source(mmap_path, mib);
		if (fd < 0)
			return 1;
		mem = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
		close(fd);
		if (mem == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		mapped = 1;
	} else {
		mem = malloc(size);
		if (!mem) {
			perror("malloc");
			return 1;
		}
		/* a pattern that touches every page: each 8 bytes hold their own offset */
		for (off_t at = 0; at < size; at += 8)
			memcpy(mem + at, &at, 8);
	}

	char *fargv[] = { argv[0], "-o", "ro,max_read=1048576,fsname=fuse_floor,subtype=floor" };
	struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se)
		return 1;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_destroy;
	if (fuse_session_mount(se, mountpoint) != 0)
		goto out_signals;
	fprintf(stderr, "fuse_floor: %ld MiB, %s, %s, mounted at %s\n", mib,
		splice_path ? "splice" : mapped ? "mmap" : "memory", single ? "single-threaded" : "multi-threaded",
		mountpoint);
	if (single) {
		ret = fuse_session_loop(se);
	} else {
		struct fuse_loop_config *cfg = fuse_loop_cfg_create();
		fuse_loop_cfg_set_clone_fd(cfg, 0);
		fuse_loop_cfg_set_max_threads(cfg, 10);
		ret = fuse_session_loop_mt(se, cfg);
		fuse_loop_cfg_destroy(cfg);
	}
	fuse_session_unmount(se);
	fprintf(stderr, "fuse_floor: %lu READs, %lu KiB each on average\n", reads,
		reads ? read_bytes / reads / 1024 : 0);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
	if (mapped)
		munmap(mem, size);
	else
		free(mem);
	if (splice_fd >= 0)
		close(splice_fd);
	return ret ? 1 : 0;
}
