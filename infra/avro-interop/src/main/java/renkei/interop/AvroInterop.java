package renkei.interop;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.SchemaCompatibility;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.avro.io.JsonEncoder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.avro.message.SchemaStore;

/**
 * Renkei's Avro framing as Apache Avro's Java library sees it. Arguments: the catalogue root
 * (schemas/avsc, one folder per logical name holding v1.avsc, v2.avsc, ...) and a work folder.
 *
 * <ul>
 *   <li>Writes {@code fingerprints.tsv}: logical name, version, Java's CRC-64-AVRO fingerprint of the
 *       Parsing Canonical Form as the 8 little-endian bytes the single-object header carries (hex), and
 *       the canonical form itself.</li>
 *   <li>Each {@code in/<name>.<case>.bin} (single-object bytes Renkei wrote) is decoded with
 *       {@link BinaryMessageDecoder}, the reader being the latest version of {@code <name>} and every
 *       catalogue version in its {@link SchemaStore}; the record is written as Avro JSON of the reader
 *       schema to {@code out/<name>.<case>.json}.</li>
 *   <li>Each {@code in/<name>.v<N>.<case>.json} (Avro JSON of version N) is read and encoded with
 *       {@link BinaryMessageEncoder} to {@code out/<name>.v<N>.<case>.bin} for Renkei to decode.</li>
 *   <li>Each {@code in/<name>.<case>.avsc} (a proposed next version) is checked FULL_TRANSITIVE (both
 *       ways against every version) with Java's {@link SchemaCompatibility}; the verdict goes to
 *       {@code out/<name>.<case>.verdict}: {@code compatible}, or {@code incompatible} and the reason.
 *       {@code compatibility.tsv} holds the same verdict for every catalogue version against those before it.</li>
 * </ul>
 *
 * Any failure ends the run with a non-zero exit and the reason on stderr.
 */
public final class AvroInterop {
    private static final Pattern VERSION_FILE = Pattern.compile("v([1-9][0-9]*)\\.avsc");
    private static final Pattern BINARY_CASE = Pattern.compile("([a-z0-9_]+)\\.([A-Za-z0-9_-]+)\\.bin");
    private static final Pattern JSON_CASE = Pattern.compile("([a-z0-9_]+)\\.v([1-9][0-9]*)\\.([A-Za-z0-9_-]+)\\.json");
    private static final Pattern PROPOSAL = Pattern.compile("([a-z0-9_]+)\\.([A-Za-z0-9_-]+)\\.avsc");

    private AvroInterop() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: AvroInterop <avsc root> <work dir>");
            System.exit(2);
        }
        Path root = Path.of(args[0]);
        Path work = Path.of(args[1]);
        Map<String, TreeMap<Integer, Schema>> catalogue = load(root);
        SchemaStore.Cache store = new SchemaStore.Cache();
        catalogue.values().forEach(versions -> versions.values().forEach(store::addSchema));
        writeFingerprints(catalogue, work.resolve("fingerprints.tsv"));
        writeCatalogueCompatibility(catalogue, work.resolve("compatibility.tsv"));

        Path in = work.resolve("in");
        Path out = work.resolve("out");
        Files.createDirectories(out);
        int decoded = 0;
        int encoded = 0;
        for (Path file : sorted(in)) {
            String fileName = file.getFileName().toString();
            Matcher json = JSON_CASE.matcher(fileName);
            Matcher binary = BINARY_CASE.matcher(fileName);
            Matcher proposal = PROPOSAL.matcher(fileName);
            if (proposal.matches()) {
                Schema proposed = new Schema.Parser().parse(file.toFile());
                List<Schema> earlier = new ArrayList<>(catalogue.get(proposal.group(1)).values());
                Files.writeString(out.resolve(fileName.replaceAll("\\.avsc$", ".verdict")), verdict(proposed, earlier));
            } else if (json.matches()) {
                Schema schema = version(catalogue, json.group(1), Integer.parseInt(json.group(2)));
                Files.write(out.resolve(fileName.replaceAll("\\.json$", ".bin")), encode(schema, Files.readString(file)));
                encoded++;
            } else if (binary.matches()) {
                Schema reader = catalogue.get(binary.group(1)).lastEntry().getValue();
                GenericRecord record = new BinaryMessageDecoder<GenericRecord>(GenericData.get(), reader, store)
                        .decode(Files.readAllBytes(file));
                Files.writeString(out.resolve(fileName.replaceAll("\\.bin$", ".json")), toJson(reader, record));
                decoded++;
            } else {
                throw new IllegalArgumentException("unexpected input file " + fileName);
            }
        }
        System.out.println("decoded " + decoded + " encoded " + encoded);
    }

    /** Every schema file, each parsed on its own (the files are self-contained). */
    private static Map<String, TreeMap<Integer, Schema>> load(Path root) throws IOException {
        Map<String, TreeMap<Integer, Schema>> catalogue = new TreeMap<>();
        for (Path folder : sorted(root)) {
            if (!Files.isDirectory(folder)) {
                continue;
            }
            TreeMap<Integer, Schema> versions = new TreeMap<>();
            for (Path file : sorted(folder)) {
                Matcher m = VERSION_FILE.matcher(file.getFileName().toString());
                if (m.matches()) {
                    versions.put(Integer.parseInt(m.group(1)), new Schema.Parser().parse(file.toFile()));
                }
            }
            if (!versions.isEmpty()) {
                catalogue.put(folder.getFileName().toString(), versions);
            }
        }
        return catalogue;
    }

    private static Schema version(Map<String, TreeMap<Integer, Schema>> catalogue, String name, int version) {
        TreeMap<Integer, Schema> versions = catalogue.get(name);
        Schema schema = versions == null ? null : versions.get(version);
        if (schema == null) {
            throw new IllegalArgumentException("no schema " + name + " v" + version);
        }
        return schema;
    }

    private static void writeFingerprints(Map<String, TreeMap<Integer, Schema>> catalogue, Path target)
            throws IOException {
        StringBuilder lines = new StringBuilder();
        for (Map.Entry<String, TreeMap<Integer, Schema>> entry : catalogue.entrySet()) {
            for (Map.Entry<Integer, Schema> version : entry.getValue().entrySet()) {
                long fingerprint = SchemaNormalization.parsingFingerprint64(version.getValue());
                byte[] framed = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fingerprint).array();
                lines.append(entry.getKey()).append('\t').append(version.getKey()).append('\t')
                        .append(hex(framed)).append('\t')
                        .append(SchemaNormalization.toParsingForm(version.getValue())).append('\n');
            }
        }
        Files.writeString(target, lines.toString(), StandardCharsets.UTF_8);
    }

    /**
     * FULL_TRANSITIVE: {@code schema} and every one of {@code earlier} can read each other's data, by
     * Java's {@link SchemaCompatibility} (what Confluent's Schema Registry applies to AVRO subjects; the
     * older {@code SchemaValidatorBuilder().mutualReadStrategy()} lets a new symbol in an enum without
     * default through, failing only when a reader meets it).
     */
    private static String verdict(Schema schema, List<Schema> earlier) {
        List<String> problems = new ArrayList<>();
        for (Schema old : earlier) {
            for (Schema[] pair : new Schema[][] {{schema, old}, {old, schema}}) {
                SchemaCompatibility.SchemaPairCompatibility result =
                        SchemaCompatibility.checkReaderWriterCompatibility(pair[0], pair[1]);
                if (result.getType() != SchemaCompatibility.SchemaCompatibilityType.COMPATIBLE) {
                    problems.add(result.getResult().getIncompatibilities().toString().replace('\n', ' '));
                }
            }
        }
        return problems.isEmpty() ? "compatible" : "incompatible\t" + String.join("; ", problems);
    }

    private static void writeCatalogueCompatibility(Map<String, TreeMap<Integer, Schema>> catalogue, Path target)
            throws IOException {
        StringBuilder lines = new StringBuilder();
        for (Map.Entry<String, TreeMap<Integer, Schema>> entry : catalogue.entrySet()) {
            for (Map.Entry<Integer, Schema> version : entry.getValue().entrySet()) {
                List<Schema> earlier = new ArrayList<>(entry.getValue().headMap(version.getKey()).values());
                lines.append(entry.getKey()).append('\t').append(version.getKey()).append('\t')
                        .append(verdict(version.getValue(), earlier)).append('\n');
            }
        }
        Files.writeString(target, lines.toString(), StandardCharsets.UTF_8);
    }

    private static byte[] encode(Schema schema, String json) throws IOException {
        GenericRecord record = new GenericDatumReader<GenericRecord>(schema)
                .read(null, DecoderFactory.get().jsonDecoder(schema, json));
        ByteBuffer framed = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema).encode(record);
        byte[] bytes = new byte[framed.remaining()];
        framed.get(bytes);
        return bytes;
    }

    private static String toJson(Schema schema, GenericRecord record) throws IOException {
        ByteArrayOutputStream buffer = new ByteArrayOutputStream();
        JsonEncoder encoder = EncoderFactory.get().jsonEncoder(schema, buffer);
        new GenericDatumWriter<GenericRecord>(schema).write(record, encoder);
        encoder.flush();
        return buffer.toString(StandardCharsets.UTF_8);
    }

    private static List<Path> sorted(Path folder) throws IOException {
        List<Path> paths = new ArrayList<>();
        try (DirectoryStream<Path> stream = Files.newDirectoryStream(folder)) {
            stream.forEach(paths::add);
        }
        paths.sort(null);
        return paths;
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) {
            out.append(String.format("%02x", b & 0xff));
        }
        return out.toString();
    }
}
